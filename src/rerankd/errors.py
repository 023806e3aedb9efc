"""The errors rerankd raises, as one hierarchy.

Every layer raises these; only the API layer turns them into HTTP responses (`status`, `type`, and
`Retry-After` where `retry_after` is set). Messages name the field and the limit, so a client can fix its call.
"""

from __future__ import annotations


class RerankdError(Exception):
    """Base class. `status` is the HTTP status the API answers with."""

    status: int = 500
    type: str = "internal_error"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class InvalidRequest(RerankdError):
    """The request breaks a documented rule or limit."""

    status = 400
    type = "invalid_request"


class PayloadTooLarge(InvalidRequest):
    """The body, or an input that may not be truncated, is over its limit."""

    status = 413
    type = "payload_too_large"


class Unauthorized(RerankdError):
    status = 401
    type = "unauthorized"


class ModelNotFound(RerankdError):
    """The request names a model this server does not serve, or a model id cannot be resolved."""

    status = 404
    type = "model_not_found"


class Overloaded(RerankdError):
    """The queue is full; the client should retry after `retry_after` seconds."""

    status = 429
    type = "overloaded"


class NotReady(RerankdError):
    """The model is still loading or warming up."""

    status = 503
    type = "not_ready"


class DeadlineExceeded(RerankdError):
    """The request's deadline passed before it was answered; its queued work was dropped."""

    status = 504
    type = "timeout"


class EngineFailure(RerankdError):
    """The backend failed while scoring a batch."""

    status = 500
    type = "engine_failure"


# Every error by its `type`, for rebuilding one that crossed a process boundary as data (fleet/replica.py). Listed
# by hand so that what can come back is explicit; tests check each subclass is here.
BY_TYPE: dict[str, type[RerankdError]] = {
    cls.type: cls
    for cls in (
        RerankdError,
        InvalidRequest,
        PayloadTooLarge,
        Unauthorized,
        ModelNotFound,
        Overloaded,
        NotReady,
        DeadlineExceeded,
        EngineFailure,
    )
}
