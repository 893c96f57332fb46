"""Cosine scoring of trials, with optional mean subtraction and adaptive S-norm (AS-norm) against a cohort.

As WeSpeaker: the mean (e.g. of the training set) is subtracted from the evaluation and cohort embeddings, all are
L2-normalised, and AS-norm uses, for each side of a trial, the mean and standard deviation (ddof 0) of its `top_n`
highest cosine scores against the cohort:  s' = 0.5 * ((s - mu_e) / sd_e + (s - mu_t) / sd_t).
Cohort statistics are computed once per utterance, in blocks, so 1e5 utterances x 1e4 cohort fit in memory.
"""

from __future__ import annotations

import logging

import numpy as np

from speakerforge.errors import DataError
from speakerforge.eval.embio import Embeddings
from speakerforge.eval.trials import Trials
from speakerforge.progress import progress_bar

log = logging.getLogger(__name__)

# Elements per temporary block (float32): about 64 MB, whatever the sizes of the sets.
_BLOCK_ELEMENTS = 1 << 24


def normalise(
    matrix: np.ndarray, keys: list[str] | None = None, mean: np.ndarray | None = None, source: str = "embeddings"
) -> np.ndarray:
    """Subtract `mean` (if given) and scale rows to unit length (float32); a zero row is an error."""
    x = np.asarray(matrix, dtype=np.float32)
    if mean is not None:
        x = x - np.asarray(mean, dtype=np.float32)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
    zero = norms <= 1e-12
    if zero.any():
        i = int(np.argmax(zero))
        name = keys[i] if keys is not None else f"row {i}"
        after = " after mean subtraction" if mean is not None else ""
        raise DataError(
            f"{source}: {int(zero.sum())} embeddings are zero{after} (first: {name}); cosine "
            "scoring needs non-zero vectors"
        )
    return (x / norms[:, None].astype(np.float32)).astype(np.float32, copy=False)


def _check_mean(mean: np.ndarray | None, dim: int, source: str) -> np.ndarray | None:
    if mean is None:
        return None
    mean = np.asarray(mean, dtype=np.float64).reshape(-1)
    if mean.shape[0] != dim:
        raise DataError(
            f"mean vector has dimension {mean.shape[0]} but {source} has {dim}; the mean must come "
            "from embeddings of the same model"
        )
    return mean


def _trial_rows(embeddings: Embeddings, trials: Trials) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of both sides; unknown keys become one error naming how many and the first few."""
    index = embeddings.index
    try:
        enroll = np.fromiter((index[k] for k in trials.enroll), dtype=np.int64, count=len(trials))
        test = np.fromiter((index[k] for k in trials.test), dtype=np.int64, count=len(trials))
    except KeyError:
        missing = list(dict.fromkeys(k for pair in zip(trials.enroll, trials.test) for k in pair if k not in index))
        raise DataError(
            f"{trials.source}: trials name {len(missing)} utterances with no embedding in "
            f"{embeddings.source} (first: {', '.join(missing[:5])}); extract embeddings for them or "
            "use the trial list that matches these embeddings"
        ) from None
    return enroll, test


def cohort_stats(
    vectors: np.ndarray, cohort: np.ndarray, top_n: int, block_elements: int = _BLOCK_ELEMENTS
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std (ddof 0) of each row's `top_n` highest dot products with the cohort rows (both normalised)."""
    n_cohort = cohort.shape[0]
    top_n = min(top_n, n_cohort)
    block = max(1, block_elements // max(1, n_cohort))
    mu = np.empty(vectors.shape[0], dtype=np.float64)
    sd = np.empty(vectors.shape[0], dtype=np.float64)
    cohort_t = np.ascontiguousarray(cohort.T)
    starts = range(0, vectors.shape[0], block)
    for start in progress_bar(starts, desc="AS-norm cohort", unit="block", disable=None if len(starts) > 4 else True):
        sims = vectors[start : start + block] @ cohort_t
        if top_n < n_cohort:
            sims = np.partition(sims, n_cohort - top_n, axis=1)[:, n_cohort - top_n :]
        mu[start : start + block] = sims.mean(axis=1, dtype=np.float64)
        sd[start : start + block] = sims.std(axis=1, dtype=np.float64)
    return mu, sd


def score_trials(
    embeddings: Embeddings,
    trials: Trials,
    *,
    mean: np.ndarray | None = None,
    cohort: Embeddings | None = None,
    top_n: int = 300,
    block_elements: int = _BLOCK_ELEMENTS,
) -> np.ndarray:
    """Cosine score (float64) per trial; with `cohort`, AS-norm with `top_n` (`top_n >= len(cohort)` is S-norm)."""
    if len(trials) == 0:
        raise DataError(f"{trials.source}: no trials to score")
    mean = _check_mean(mean, embeddings.dim, embeddings.source)
    if cohort is not None:
        _check_cohort(cohort, embeddings, top_n)
    enroll, test = _trial_rows(embeddings, trials)
    # Only the utterances the trials use are normalised (and compared with the cohort).
    used, inverse = np.unique(np.concatenate([enroll, test]), return_inverse=True)
    enroll, test = inverse[: len(trials)], inverse[len(trials) :]
    keys = [embeddings.keys_list[i] for i in used]
    x = normalise(embeddings.matrix[used], keys, mean, embeddings.source)

    scores = np.empty(len(trials), dtype=np.float64)
    chunk = max(1, block_elements // (2 * x.shape[1]))
    for start in range(0, len(trials), chunk):
        e, t = enroll[start : start + chunk], test[start : start + chunk]
        scores[start : start + chunk] = np.einsum("ij,ij->i", x[e], x[t])

    if cohort is not None:
        scores = _as_norm(scores, x, enroll, test, keys, cohort, mean, top_n, block_elements)
    return scores


def _check_cohort(cohort: Embeddings, embeddings: Embeddings, top_n: int) -> None:
    if cohort.dim != embeddings.dim:
        raise DataError(
            f"cohort {cohort.source} has dimension {cohort.dim} but the embeddings "
            f"{embeddings.source} have {embeddings.dim}; the cohort must be extracted with the same model"
        )
    if top_n < 2:
        raise DataError(f"AS-norm top_n must be at least 2 (a standard deviation of one score is 0), got {top_n}")
    if top_n > len(cohort):
        log.warning("AS-norm top_n %d exceeds the cohort size %d; using the whole cohort (S-norm)", top_n, len(cohort))


def _as_norm(
    scores: np.ndarray,
    x: np.ndarray,
    enroll: np.ndarray,
    test: np.ndarray,
    keys: list[str],
    cohort: Embeddings,
    mean: np.ndarray | None,
    top_n: int,
    block_elements: int,
) -> np.ndarray:
    c = normalise(cohort.matrix, cohort.keys_list, mean, cohort.source)
    log.info("AS-norm: %d utterances x %d cohort, top %d", x.shape[0], c.shape[0], min(top_n, len(cohort)))
    mu, sd = cohort_stats(x, c, top_n, block_elements)
    flat = sd <= 1e-12
    if flat.any():
        raise DataError(
            f"AS-norm: the top cohort scores of {int(flat.sum())} utterances have zero spread "
            f"(first: {keys[int(np.argmax(flat))]}); the cohort {cohort.source} holds duplicate "
            "vectors or is too small"
        )
    return 0.5 * ((scores - mu[enroll]) / sd[enroll] + (scores - mu[test]) / sd[test])
