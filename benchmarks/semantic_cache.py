"""The semantic cache's quality and cost: how often a hit would be the right answer, at
which cosine threshold, and what a lookup costs per request.

    .venv/bin/python -m benchmarks.semantic_cache [--repository .surge/models]

Writes benchmarks/results/semantic_cache.md and .json; 2-4 minutes on the shared 2-core
box (before each measured size it waits up to 30 s for the machine to go quiet).

Quality, on `data/paraphrases.tsv`: pairs of texts written by hand, labelled 1 when
the answer cached for one is right for the other, 0 when not (most are hard negatives:
negations, swapped entities, other numbers, "how to X" vs "how not to X"). Each text is
embedded by surge's own `EmbeddingsRuntime` on the demo's all-MiniLM-L6-v2 export (mean
pooling, L2 normalised: what the `embed` endpoint answers). For each threshold:
- pairwise: a pair is a hit when its cosine reaches the threshold. Precision = labelled
  paraphrases among hits (with its 95 % Wilson lower bound: the set is small), recall =
  paraphrases hit, hit rate = hits among all pairs (the set is about half paraphrases,
  so this is not a production hit rate);
- replay: every text_a is stored in one `SemanticCache` scope and every text_b looked
  up in it, so a hit can also land on another pair's text. A hit is right only when it
  lands on the text_b's own labelled paraphrase, so this precision is a lower bound
  (an unlabelled neighbour of the same meaning counts as wrong).
The recommended threshold is the lowest whose pairwise precision reaches 0.95.

Cost (`semantic_cost.py`): a lookup per request in µs, the embedding excluded, at
index sizes from 256 to 16k (1k and 10k in the headline), inline and in a thread, and
how long each keeps the event loop from other work; and apart, the embedding of one
query by the runtime in this process (one thread), one text per call and 32 per call.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

DATA = Path(__file__).parent / "data" / "paraphrases.tsv"
RESULTS = Path(__file__).parent / "results"
REPOSITORY = Path(__file__).parents[1] / ".surge" / "models"  # where the demo builds it
THRESHOLDS = tuple(round(0.80 + 0.01 * i, 2) for i in range(19))  # 0.80 .. 0.98
TARGET_PRECISION = 0.95
HEADLINE_SIZES = (1_000, 10_000)


class Pair(NamedTuple):
    text_a: str
    text_b: str
    label: int


def load_pairs(path: Path = DATA) -> list[Pair]:
    pairs = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("text_a\t"):
            continue
        fields = line.split("\t")
        if len(fields) != 3 or fields[2] not in ("0", "1"):
            raise ValueError(f"{path}:{n}: expected text_a<TAB>text_b<TAB>0|1")
        pairs.append(Pair(fields[0], fields[1], int(fields[2])))
    return pairs


# -- pure metrics (tests/unit/test_semantic_bench.py) --


def wilson_lower(successes: int, n: int, z: float = 1.96) -> float | None:
    """The 95 % Wilson lower bound of a proportion: how low the precision may really be
    given how few hits measured it."""
    if n == 0:
        return None
    p = successes / n
    centre = p + z * z / (2 * n)
    margin = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - margin) / (1 + z * z / n)


def pair_metrics(cosines: Sequence[float], labels: Sequence[int], threshold: float) -> dict:
    """Precision (None without hits), recall and hit rate of `cosine >= threshold`."""
    cos, lab = np.asarray(cosines, dtype=np.float64), np.asarray(labels, dtype=bool)
    hit = cos >= threshold
    hits, right = int(hit.sum()), int((hit & lab).sum())
    positives = int(lab.sum())
    return {
        "threshold": threshold,
        "hits": hits,
        "right": right,
        "wrong": hits - right,
        "precision": right / hits if hits else None,
        "precision_low95": wilson_lower(right, hits),
        "recall": right / positives if positives else None,
        "hit_rate": hits / len(cos) if len(cos) else 0.0,
    }


def sweep(cosines: Sequence[float], labels: Sequence[int], thresholds=THRESHOLDS) -> list[dict]:
    return [pair_metrics(cosines, labels, t) for t in thresholds]


def pick_threshold(rows: list[dict], target: float = TARGET_PRECISION) -> dict:
    """The lowest threshold whose precision reaches `target` (the most hits at that
    precision); when none does, says so and names the most precise one instead."""
    met = [r for r in rows if r["precision"] is not None and r["precision"] >= target]
    if met:
        return {"met": True, "target": target, "best": min(met, key=lambda r: r["threshold"])}
    measured = [r for r in rows if r["precision"] is not None]
    best = max(measured, key=lambda r: (r["precision"], r["hits"]), default=None)
    return {"met": False, "target": target, "best": best}


def replay_metrics(matches: list[tuple[float, bool]], threshold: float) -> dict:
    """`matches`: per query, the best stored neighbour's cosine and whether it is the
    query's labelled paraphrase."""
    hits = [right for cosine, right in matches if cosine >= threshold]
    return {
        "threshold": threshold,
        "hits": len(hits),
        "right": sum(hits),
        "precision": sum(hits) / len(hits) if hits else None,
        "hit_rate": len(hits) / len(matches) if matches else 0.0,
    }


# -- measurements --


def embed_texts(runtime: Any, texts: list[str], batch: int = 32) -> np.ndarray:
    from benchmarks.inprocess import as_text

    parts = [runtime.run({"text": as_text(texts[i : i + batch])})["embedding"]
             for i in range(0, len(texts), batch)]  # fmt: skip
    return np.concatenate(parts).astype(np.float32)


def replay(pairs: list[Pair], vectors: dict[str, np.ndarray]) -> dict[str, Any]:
    """Store every text_a in one cache scope, look up every text_b that is not itself
    stored (an exact repeat is the exact cache's business)."""
    from surge.cache.semantic_cache import SemanticCache

    async def no_embed(texts: list[str]) -> np.ndarray:
        raise AssertionError("the replay looks up vectors already embedded")

    cache = SemanticCache(no_embed, -1.0, 10_000, 1 << 30, 3600.0, clock=lambda: 0.0)
    for pair in pairs:
        cache.add_vector(vectors[pair.text_a], None, pair.text_a.encode(), 0.0, key=pair.text_a)
    paraphrases = {(p.text_a, p.text_b) for p in pairs if p.label}
    queries = sorted({p.text_b for p in pairs} - {p.text_a for p in pairs})
    matches = []
    for text in queries:
        hit = cache.lookup_vector(vectors[text], None, now=0.0)
        assert hit is not None  # threshold -1: the best neighbour, whatever its cosine
        matches.append((hit.cosine, (hit.key, text) in paraphrases))
    return {"stored": cache.entries, "queries": len(queries), "matches": matches}


def run(repository: Path) -> dict[str, Any]:
    from benchmarks.inprocess import load_embed
    from benchmarks.report import machine_facts
    from benchmarks.semantic_cost import embedding_cost, lookup_cost
    from surge.cache.semantic_cache import THREAD_CUTOVER_ENTRIES
    from surge.demo.build import ensure_demo_models

    pairs = load_pairs()
    ensure_demo_models(repository, ("embed/1",))
    runtime = load_embed(repository, threads=1)
    texts = sorted({t for p in pairs for t in (p.text_a, p.text_b)})
    vectors = dict(zip(texts, embed_texts(runtime, texts), strict=True))
    cosines = [float(vectors[p.text_a] @ vectors[p.text_b]) for p in pairs]
    labels = [p.label for p in pairs]
    rows = sweep(cosines, labels)
    played = replay(pairs, vectors)
    for row in rows:
        r = replay_metrics(played["matches"], row["threshold"])
        row |= {"replay_precision": r["precision"], "replay_hit_rate": r["hit_rate"]}
    by_label = {
        lab: [c for c, x in zip(cosines, labels, strict=True) if x == lab] for lab in (0, 1)
    }
    return {
        "model": "all-MiniLM-L6-v2 (demo ONNX export, surge EmbeddingsRuntime, L2-normalised)",
        "set": {"pairs": len(pairs), "paraphrases": sum(labels), "texts": len(texts)},
        "cosine_by_label": {
            str(lab): {"min": min(cs), "median": float(np.median(cs)), "max": max(cs)}
            for lab, cs in by_label.items()
        },
        "hardest_negatives": _hardest_negatives(pairs, cosines),
        "sweep": rows,
        "recommended": pick_threshold(rows),
        "replay": {"stored": played["stored"], "queries": played["queries"]},
        "thread_cutover_entries": THREAD_CUTOVER_ENTRIES,
        "lookup_cost": lookup_cost(np.stack([vectors[t] for t in texts])),
        "embedding": embedding_cost(runtime, texts),
        "machine": machine_facts(),
    }


def _hardest_negatives(pairs: list[Pair], cosines: list[float], n: int = 8) -> list[dict]:
    negatives = [
        {"cosine": c, "text_a": p.text_a, "text_b": p.text_b}
        for p, c in zip(pairs, cosines, strict=True)
        if not p.label
    ]
    return sorted(negatives, key=lambda r: -r["cosine"])[:n]


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def markdown(report: dict[str, Any]) -> str:
    s, rec, emb = report["set"], report["recommended"], report["embedding"]
    cost = {r["entries"]: r for r in report["lookup_cost"]}
    lines = [
        "# Semantic cache: quality of hits by threshold, cost of a lookup",
        "",
        f"{s['pairs']} hand-labelled pairs ({s['paraphrases']} paraphrases, the rest mostly "
        f"hard negatives), `benchmarks/data/paraphrases.tsv`; {report['model']}. Replay: "
        f"{report['replay']['stored']} text_a stored in one scope, "
        f"{report['replay']['queries']} text_b looked up (a hit right only on its own "
        "labelled paraphrase: a lower bound).",
        "",
        "| threshold | hits | precision | precision, 95% low | recall | hit rate "
        "| replay precision | replay hit rate |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["sweep"]:
        lines.append(
            f"| {r['threshold']:.2f} | {r['hits']} | {_pct(r['precision'])} "
            f"| {_pct(r['precision_low95'])} | {_pct(r['recall'])} | {_pct(r['hit_rate'])} "
            f"| {_pct(r['replay_precision'])} | {_pct(r['replay_hit_rate'])} |"
        )
    lines.append("")
    b = rec["best"]
    if rec["met"]:
        lines.append(
            f"**Recommended threshold {b['threshold']:.2f}**: the lowest with precision "
            f"≥ {rec['target']:.0%}: precision {_pct(b['precision'])} ({b['right']} of "
            f"{b['hits']} hits; 95% lower bound {_pct(b['precision_low95'])}), recall "
            f"{_pct(b['recall'])}, hit rate {_pct(b['hit_rate'])} of pairs."
        )
    else:
        lines.append(f"**No threshold reaches precision ≥ {rec['target']:.0%}.**")
        if b is not None:
            lines.append(
                f"The most precise is {b['threshold']:.2f}: {_pct(b['precision'])} "
                f"({b['right']} of {b['hits']} hits), recall {_pct(b['recall'])}."
            )
    by_label = report["cosine_by_label"]
    lines += [
        "",
        f"Median cosine of paraphrases {by_label['1']['median']:.3f} (max "
        f"{by_label['1']['max']:.3f}), of non-paraphrases {by_label['0']['median']:.3f} (max "
        f"{by_label['0']['max']:.3f}). Cosine alone measures shared words and topic, not who "
        "does what to whom: the hardest negatives score above most paraphrases, so a "
        "higher threshold does not buy precision. The set is about half near-misses by "
        "design; on live traffic precision depends on how often such near-misses arrive.",
        "",
        "Cosines of the hardest negatives (labelled 0):",
        "",
    ]
    for r in report["hardest_negatives"]:
        lines.append(f'- {r["cosine"]:.3f}: "{r["text_a"]}" / "{r["text_b"]}"')
    lines += [
        "",
        f"## Lookup cost (µs per request, p50 / p99; embedding excluded; 384-d, one scope; "
        f"thread cut-over {report['thread_cutover_entries']} entries)",
        "",
        "| entries | sans-IO lookup | async, default | async, inline | async, in a thread "
        "| loop stall p99, inline | loop stall p99, thread |",
        "|---|---|---|---|---|---|---|",
    ]
    for size, r in cost.items():
        cells = [
            f"{r[k]['p50_us']:.0f} / {r[k]['p99_us']:.0f}"
            for k in ("sans_io_inline", "async_default", "async_inline", "async_thread")
        ]
        cells += [f"{r[k]['p99_us']:.0f}" for k in ("stall_inline", "stall_thread")]
        lines.append(f"| {size:,} | " + " | ".join(cells) + " |")
    head = " and ".join(
        f"{cost[n]['async_default']['p50_us']:.0f} µs at {n:,}" for n in HEADLINE_SIZES if n in cost
    )
    lines += [
        "",
        f"Lookup per request (async, default cut-over, p50): {head}. Embedding the query "
        f"(surge's runtime in process, one thread): {emb['one_per_call_p50_ms']:.1f} ms p50 "
        f"for one text per call (p99 {emb['one_per_call_p99_ms']:.1f} ms), "
        f"{emb['batch32_ms_per_text']:.2f} ms per text in batches of 32; through the "
        "embed endpoint add its HTTP and queueing time.",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=REPOSITORY)
    args = parser.parse_args(argv)
    report = run(args.repository)
    table = markdown(report)
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "semantic_cache.md").write_text(table)
    (RESULTS / "semantic_cache.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
