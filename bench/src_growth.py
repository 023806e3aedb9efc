"""Where src/'s Python lines came from since issue 10 was filed: each commit's added minus removed lines, summed
by the issue the commit served.

Issue 10 asks that its restructure not grow src/, while issues 9, 11, 12 and 13 asked for features in the same
weeks. A commit's lines are counted once, by the label below (its message names its purpose). Renames count as a
removal and an addition (`--no-renames`), so moving code between modules nets to its edits. Lines under
src/rerankd/testing/ are left out: that folder held test tooling between two of issue 10's commits and is gone;
leaving it out counts the move of the tooling that existed at filing (fleet/netns, processes, costmodel) as issue
10's removal, and never counts issue 13's cluster harness as production code. Commits missing from the table are
listed as "not classified", so the sums always add up to the line count now.

    python bench/src_growth.py          # table, bench/results/src_growth.json and .png
"""

from __future__ import annotations

import subprocess
from collections import defaultdict

import common

FILED_AT = "6295c91"  # the commit whose src/ had the 5,578 lines the issue counted
LEFT_OUT = "src/rerankd/testing/"

LABELS = {
    "2": "session 2, after the count: fair scheduling, speed-aware routing",
    "9": "issue 9: hostile and heavy traffic",
    "10": "issue 10: the house (restructure, libraries)",
    "11": "issue 11: today's rerankers (LLM, golden suite, cascades)",
    "12": "issue 12: CPU speed (tuning, score cache, int8-rescore, cache affinity)",
    "13": "issue 13: beyond one machine (ingress replicas, deploy manifests)",
}

BY_COMMIT = {
    **dict.fromkeys(["e154bbd", "6803d42", "18f27be", "6f94d7b", "7a41d04", "0a999f2"], "2"),
    **dict.fromkeys(
        [
            "66a1877", "9614977", "5b99bf3", "63de4e8", "4968286", "34832fb", "7ef3fda", "9ae8f72", "e3093a8",
            "c1a40b3", "04360eb", "fb7323b", "b2a2b82",
        ],
        "9",
    ),
    **dict.fromkeys(
        [
            "09d2670", "41cfac1", "bb38fbd", "0974498", "827a24e", "5ed0267", "92d8fec", "7e950e8", "09b74df",
            "748bda5", "1bdbea2", "a908693", "b420faa", "702488c", "0f5c3ed", "cf7f956", "fe425dc", "e2531b4",
            "af5d112", "fe242aa", "f17c4a9", "cdb8137", "b304838", "e129cf6", "38ae1c8", "214ea5c", "b20376b",
            "ea3a8f8", "3b0683c",
            # session 7: libraries and merges, no feature
            "7127894", "62e3d31", "3ab0333", "e828ab2", "19a83a6", "1d17893", "8f999c6", "7850c1b", "f325d63",
            "4e6e62d", "b0f2878", "ec9fa51", "22f92c4", "6dd8b6b", "8c3f495", "a7324eb", "1e9dde1", "187e0e4",
            "ffe218d", "692d740",
        ],
        "10",
    ),
    **dict.fromkeys(
        [
            "fc24328", "ea76370", "b35f05f", "523f150", "0dd04fa", "044da6e", "aceab9b", "b95dd7a", "e6c0922",
            "2fe77ae", "7fe7100",
        ],
        "11",
    ),
    **dict.fromkeys(
        [
            "0603228", "1b6c4fb", "451c690", "fe0aaab", "b125587", "de71028", "994564f", "8b5e55c", "16e6cfb",
            "f41cd05", "039d41d",
        ],
        "12",
    ),
    **dict.fromkeys(["10d4149", "de09b3f", "f7b26d4", "7fad3e7", "0e6c073", "10d4be8", "8400cff"], "13"),
}  # fmt: skip


def git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True, cwd=common.REPO).stdout


def python_lines(commit: str) -> int:
    files = [path for path in git("ls-tree", "-r", "--name-only", commit, "src").split() if path.endswith(".py")]
    return sum(len(git("show", f"{commit}:{path}").splitlines()) for path in files if not path.startswith(LEFT_OUT))


def commit_changes(base: str) -> list[tuple[str, str, int, int]]:
    """(hash, subject, added, removed) per commit after `base` that touched src/'s Python files."""
    log = git("log", "--reverse", "--no-renames", "--numstat", "--format=@%h %s", f"{base}..HEAD", "--", "src")
    changes: list[tuple[str, str, int, int]] = []
    for line in log.splitlines():
        if line.startswith("@"):
            commit, _, subject = line[1:].partition(" ")
            changes.append((commit, subject, 0, 0))
        elif line.strip():
            added, removed, path = line.split("\t")
            if path.endswith(".py") and not path.startswith(LEFT_OUT) and added != "-":
                commit, subject, a, r = changes[-1]
                changes[-1] = (commit, subject, a + int(added), r + int(removed))
    return changes


def label_of(commit: str) -> str:
    return next((label for prefix, label in BY_COMMIT.items() if commit.startswith(prefix)), "not classified")


def main() -> None:
    filed, now = python_lines(FILED_AT), python_lines("HEAD")
    sums: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    unclassified = []
    for commit, subject, added, removed in commit_changes(FILED_AT):
        label = label_of(commit)
        sums[label][0] += 1
        sums[label][1] += added
        sums[label][2] += removed
        if label == "not classified":
            unclassified.append(f"{commit} {subject}")
    columns = ["served", "commits", "added", "removed", "net"]
    rows = [
        dict(zip(columns, [LABELS.get(label, label), commits, added, removed, added - removed], strict=True))
        for label, (commits, added, removed) in sorted(sums.items(), key=lambda item: item[0].zfill(3))
    ]
    net = sum(row["net"] for row in rows)
    print(f"src/ Python lines: {filed} at {FILED_AT} (filed), {now} at HEAD; commits' net {net:+d}")
    print(common.format_table(rows, columns))
    for line in unclassified:
        print("not classified:", line)
    if filed + net != now:
        raise SystemExit(f"the commits' net ({net:+d}) does not explain {filed} -> {now}")
    restructure = next(row["net"] for row in rows if row["served"] == LABELS["10"])
    print(f"issue 10's own net: {restructure:+d} lines ({'does not grow src/' if restructure <= 0 else 'grows src/'})")
    record = {
        "filed_at": FILED_AT,
        "lines_filed": filed,
        "lines_now": now,
        "by_purpose": rows,
        "not_classified": unclassified,
        "issue_10_net": restructure,
    }
    path = common.save("src_growth", record)
    plot(rows, filed, now)
    print(f"saved {path}")


def plot(rows: list[dict], filed: int, now: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(9, 4))
    nets = [row["net"] for row in rows]
    axis.barh(
        [row["served"].split(":")[0] for row in rows], nets, color=["tab:green" if n <= 0 else "tab:red" for n in nets]
    )
    axis.axvline(0, color="black", linewidth=0.8)
    axis.invert_yaxis()
    axis.set_xlabel("net Python lines in src/ (added - removed)")
    axis.set_title(f"src/ growth by purpose: {filed} lines when issue 10 was filed, {now} now")
    figure.tight_layout()
    figure.savefig(common.plot_path("src_growth"), dpi=120)


if __name__ == "__main__":
    main()
