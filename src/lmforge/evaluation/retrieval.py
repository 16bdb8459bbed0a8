"""Retrieval metrics for an embedding model: recall@k, MRR and nDCG@10 over a corpus.

Every query ranks the whole corpus by dot product (cosine similarity for normalized
embeddings). Queries are scored in chunks, so memory stays at chunk x corpus scores.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

NDCG_AT = 10


def retrieval_metrics(
    queries: np.ndarray,
    corpus: np.ndarray,
    relevant: Sequence[set[int]],
    ks: Sequence[int] = (1, 5, 10),
    chunk: int = 1024,
) -> dict[str, float]:
    """Rank the corpus for every query and average the ranking metrics over queries.

    Args:
        queries: Query embeddings (Q, H), normalized already.
        corpus: Document embeddings (D, H), normalized already.
        relevant: For each query, the corpus ids of its relevant documents (non-empty).
        ks: Cut-offs for ``recall@k``: the share of a query's relevant documents in its
            top k (the hit rate when a query has one relevant document).
        chunk: Queries scored at once.

    Returns:
        ``recall@k`` for each k, ``mrr`` (1 / rank of the first relevant document),
        ``ndcg@10`` (binary relevance), ``n_queries`` and ``n_corpus``. Equal scores rank
        by corpus index, so results are deterministic.
    """
    queries = np.asarray(queries, dtype=np.float32)
    corpus = np.asarray(corpus, dtype=np.float32)
    _check(queries, corpus, relevant)
    recall = {k: 0.0 for k in ks}
    mrr = ndcg = 0.0
    positions = np.arange(len(corpus))
    for start in range(0, len(queries), chunk):
        scores = queries[start : start + chunk] @ corpus.T  # (C, D)
        order = np.argsort(-scores, axis=1, kind="stable")  # (C, D): stable = ties by corpus index
        ranks = np.empty_like(order)  # (C, D): 1-based rank of each document
        np.put_along_axis(ranks, order, np.broadcast_to(positions + 1, order.shape), axis=1)
        for row, docs in enumerate(relevant[start : start + chunk]):
            found = np.sort(ranks[row, sorted(docs)])  # (R,) ranks of the relevant documents
            for k in ks:
                recall[k] += np.count_nonzero(found <= k) / len(docs)
            mrr += 1.0 / found[0]
            ndcg += _ndcg(found, len(docs))
    n = len(queries)
    metrics: dict[str, float] = {f"recall@{k}": recall[k] / n for k in ks}
    metrics.update(
        {"mrr": mrr / n, f"ndcg@{NDCG_AT}": ndcg / n, "n_queries": n, "n_corpus": len(corpus)}
    )
    return metrics


def _ndcg(ranks: np.ndarray, n_relevant: int) -> float:
    """Binary-relevance nDCG@10 from the 1-based ranks of the relevant documents."""
    top = ranks[ranks <= NDCG_AT]
    dcg = float(np.sum(1.0 / np.log2(top + 1)))
    ideal = float(np.sum(1.0 / np.log2(np.arange(2, min(NDCG_AT, n_relevant) + 2))))
    return dcg / ideal


def _check(queries: np.ndarray, corpus: np.ndarray, relevant: Sequence[set[int]]) -> None:
    if queries.ndim != 2 or corpus.ndim != 2 or queries.shape[1] != corpus.shape[1]:
        raise ValueError(
            f"queries {queries.shape} and corpus {corpus.shape} must be (Q, H) and (D, H)"
        )
    if len(queries) == 0 or len(corpus) == 0:
        raise ValueError(
            f"{len(queries)} queries and {len(corpus)} documents; need at least one of each"
        )
    if len(relevant) != len(queries):
        raise ValueError(f"{len(queries)} queries but {len(relevant)} relevance sets")
    empty = sum(not docs for docs in relevant)
    if empty:
        raise ValueError(
            f"{empty} of {len(relevant)} queries have no relevant document; "
            "drop them or add their documents to the corpus"
        )
    outside = sum(any(not 0 <= d < len(corpus) for d in docs) for docs in relevant)
    if outside:
        raise ValueError(
            f"{outside} queries name relevant ids outside the corpus (0..{len(corpus) - 1})"
        )


def build_corpus(
    queries: Sequence[str], positives: Sequence[str], extra_corpus: Sequence[str] = ()
) -> tuple[list[str], list[set[int]]]:
    """Corpus and relevance sets from (query, positive) pairs.

    The corpus is the distinct positives in first-seen order, then the extra texts not
    already in it. A query text that appears with several positives is relevant to all of
    them, on every row where it appears.

    Returns:
        The corpus texts and, for each input row, the corpus ids relevant to its query.
    """
    if len(queries) != len(positives):
        raise ValueError(f"{len(queries)} queries but {len(positives)} positives")
    ids: dict[str, int] = {}
    for text in [*positives, *extra_corpus]:
        ids.setdefault(text, len(ids))
    by_query: dict[str, set[int]] = {}
    for query, positive in zip(queries, positives, strict=True):
        by_query.setdefault(query, set()).add(ids[positive])
    return list(ids), [set(by_query[query]) for query in queries]
