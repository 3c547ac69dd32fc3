"""The number-reading objective, decoding and metrics, written with keras.ops (any backend).

A model emits one logits tensor of shape (batch, 7 + 5 * 10): the length head (lengths 0..5 and ">5")
followed by five digit heads. Targets are int (batch, 6): the length class, then five digits with
NO_DIGIT beyond the number's length.

- Loss: -log P(L) - sum_{i < L} log P(X_i); digit heads beyond the true length get no loss.
- Decoding: the length maximising log P(L) + sum_{i < L} max log P(X_i), then each digit's argmax.
- Sequence ("global") accuracy: length and every digit right. Per-position digit accuracy counts only
  examples that have that position. Coverage: accuracy when the least confident are rejected.
"""

from __future__ import annotations

import numpy as np

from harness import LENGTH_CLASSES, MAX_DIGITS, NO_DIGIT
from harness.backend import load_keras

keras = load_keras()
ops = keras.ops



def split_logits(logits):
    """-> length log-probs (B, 7), digit log-probs (B, 5, 10), in float32."""
    logits = ops.cast(logits, "float32")
    length = ops.log_softmax(logits[:, :LENGTH_CLASSES], axis=-1)
    digits = ops.reshape(logits[:, LENGTH_CLASSES:], (-1, MAX_DIGITS, 10))
    return length, ops.log_softmax(digits, axis=-1)


def _present(true_length):
    """(B, 5) float mask: 1 where the true number has a digit at that position."""
    positions = ops.arange(MAX_DIGITS, dtype="int32")[None, :]
    return ops.cast(positions < ops.minimum(true_length, MAX_DIGITS)[:, None], "float32")


def sequence_loss(y_true, y_pred, label_smoothing: float = 0.0):
    """Mean over the batch of -log P(L) - sum_{i<L} log P(X_i). With ``label_smoothing`` e, each head's
    target is 1 - e on the true class plus e spread evenly over the head's classes (Szegedy et al. 2016):
    its term becomes (1 - e) * -log P(true) + e * mean over classes of -log P(class)."""
    y_true = ops.cast(y_true, "int32")
    length_lp, digit_lp = split_logits(y_pred)
    true_length = y_true[:, 0]
    true_digits = ops.minimum(y_true[:, 1:], 9)  # NO_DIGIT positions are masked below
    nll_length = -ops.take_along_axis(length_lp, true_length[:, None], axis=1)[:, 0]
    nll_digits = -ops.take_along_axis(digit_lp, true_digits[:, :, None], axis=2)[:, :, 0]
    if label_smoothing:
        e = float(label_smoothing)
        nll_length = (1.0 - e) * nll_length - e * ops.mean(length_lp, axis=-1)
        nll_digits = (1.0 - e) * nll_digits - e * ops.mean(digit_lp, axis=-1)
    return ops.mean(nll_length + ops.sum(nll_digits * _present(true_length), axis=1))


@keras.saving.register_keras_serializable(package="harness")
class SequenceLoss(keras.losses.Loss):
    """The training objective (``sequence_loss``) with its label smoothing, serializable with a compiled model."""

    def __init__(self, label_smoothing: float = 0.0, name: str = "sequence_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        return sequence_loss(y_true, y_pred, self.label_smoothing)

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


@keras.saving.register_keras_serializable(package="harness")
def _sequence_loss_fn(y_true, y_pred):  # the loss models compiled by earlier versions name; they still load
    return sequence_loss(y_true, y_pred)


def decode(logits):
    """-> (length (B,) int32, digits (B, 5) int32 with NO_DIGIT beyond the length, log-prob (B,))."""
    length_lp, digit_lp = split_logits(logits)
    best = ops.max(digit_lp, axis=-1)  # (B, 5)
    cum = ops.concatenate([ops.zeros_like(best[:, :1]), ops.cumsum(best, axis=1)], axis=1)  # (B, 6)
    # length L < 6 uses the first L digits; ">5" scores all five heads
    cum = ops.concatenate([cum, cum[:, -1:]], axis=1)  # (B, 7)
    scores = length_lp + cum
    length = ops.cast(ops.argmax(scores, axis=1), "int32")
    digits = ops.cast(ops.argmax(digit_lp, axis=-1), "int32")
    digits = ops.where(_present(length) > 0, digits, NO_DIGIT)
    return length, digits, ops.max(scores, axis=1)


def _correct(y_true, y_pred):
    """Per-example correctness: sequence (B,), length (B,), digits (B, 5), present mask (B, 5)."""
    y_true = ops.cast(y_true, "int32")
    length, digits, _ = decode(y_pred)
    _, digit_lp = split_logits(y_pred)
    head_digits = ops.cast(ops.argmax(digit_lp, axis=-1), "int32")
    present = _present(y_true[:, 0])
    digit_ok = ops.cast(ops.equal(head_digits, y_true[:, 1:]), "float32")
    length_ok = ops.cast(ops.equal(length, y_true[:, 0]), "float32")
    wrong_digits = ops.sum(present * (1.0 - digit_ok), axis=1)
    sequence_ok = length_ok * ops.cast(wrong_digits == 0, "float32")
    return sequence_ok, length_ok, digit_ok, present


class _Ratio(keras.metrics.Metric):
    """Correct / total, accumulated over batches inside the compiled step.

    Subclasses define ``counts(y_true, y_pred) -> (hits, total)`` for one batch.
    """

    def __init__(self, name: str, **kwargs):
        super().__init__(name=name, **kwargs)
        self.hits = self.add_variable(shape=(), initializer="zeros", name="hits")
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")

    def update_state(self, y_true, y_pred, sample_weight=None):
        hits, total = self.counts(y_true, y_pred)
        self.hits.assign_add(ops.cast(hits, self.dtype))
        self.total.assign_add(ops.cast(total, self.dtype))

    def result(self):
        # NaN, not 0, when no example had this position: "no evidence" must not read as "all wrong"
        return ops.where(self.total > 0, self.hits / ops.maximum(self.total, 1.0), float("nan"))


@keras.saving.register_keras_serializable(package="harness")
class SequenceAccuracy(_Ratio):
    def __init__(self, name="sequence_accuracy", **kwargs):
        super().__init__(name=name, **kwargs)

    def counts(self, y_true, y_pred):
        seq, _, _, _ = _correct(y_true, y_pred)
        return ops.sum(seq), ops.shape(seq)[0]


@keras.saving.register_keras_serializable(package="harness")
class LengthAccuracy(_Ratio):
    def __init__(self, name="length_accuracy", **kwargs):
        super().__init__(name=name, **kwargs)

    def counts(self, y_true, y_pred):
        _, length_ok, _, _ = _correct(y_true, y_pred)
        return ops.sum(length_ok), ops.shape(length_ok)[0]


@keras.saving.register_keras_serializable(package="harness")
class DigitAccuracy(_Ratio):
    """Accuracy of digit head ``position`` (0-based) over examples whose number has that position."""

    def __init__(self, position: int = 0, name=None, **kwargs):
        super().__init__(name=name or f"digit{position + 1}_accuracy", **kwargs)
        self.position = position

    def counts(self, y_true, y_pred):
        _, _, digit_ok, present = _correct(y_true, y_pred)
        p = self.position
        return ops.sum(digit_ok[:, p] * present[:, p]), ops.sum(present[:, p])

    def get_config(self):
        return {**super().get_config(), "position": self.position}


def keras_metrics() -> list:
    return [SequenceAccuracy(), LengthAccuracy()] + [DigitAccuracy(p) for p in range(MAX_DIGITS)]


# ---------------------------------------------------------------- evaluation on whole splits (numpy)

def evaluate_arrays(targets: np.ndarray, logits: np.ndarray, target_accuracy: float = 0.98) -> dict:
    """All held-out metrics from targets (N, 6) and logits (N, 57)."""
    seq, length_ok, digit_ok, present = (
        np.asarray(ops.convert_to_numpy(t)) for t in _correct(targets, logits)
    )
    _, _, logp = decode(logits)
    confidence = np.exp(np.asarray(ops.convert_to_numpy(logp), dtype=np.float64))
    out = {
        "examples": int(len(targets)),
        "sequence_accuracy": float(seq.mean()) if len(seq) else 0.0,
        "length_accuracy": float(length_ok.mean()) if len(seq) else 0.0,
    }
    for p in range(MAX_DIGITS):
        n = present[:, p].sum()
        out[f"digit{p + 1}_accuracy"] = float((digit_ok[:, p] * present[:, p]).sum() / n) if n else float("nan")
        out[f"digit{p + 1}_examples"] = int(n)
    n_digits = present.sum()
    out["digit_accuracy"] = float((digit_ok * present).sum() / n_digits) if n_digits else float("nan")
    out[f"coverage_at_{round(target_accuracy * 100)}"] = coverage_at(seq, confidence, target_accuracy)
    return out


def per_example(targets: np.ndarray, logits: np.ndarray) -> dict[str, np.ndarray]:
    """Per-example results on whole splits: what the aggregate metrics above are computed from.

    ``correct`` (N,) bool: the whole number right; ``length`` (N,) decoded length class; ``digits``
    (N, 5) decoded digits (NO_DIGIT beyond the decoded length); ``heads`` (N, 5) each digit head's
    argmax whatever the length (per-position accuracy and the digit confusion matrix use these);
    ``confidence`` (N,) the decoded number's probability (coverage ranks by it).
    """
    seq, _, _, _ = _correct(targets, logits)
    length, digits, logp = decode(logits)
    _, digit_lp = split_logits(logits)
    numpy = lambda t: np.asarray(ops.convert_to_numpy(t))  # noqa: E731
    return {
        "correct": numpy(seq) > 0.5,
        "length": numpy(length).astype(np.int32),
        "digits": numpy(digits).astype(np.int32),
        "heads": numpy(ops.argmax(digit_lp, axis=-1)).astype(np.int32),
        "confidence": np.exp(numpy(logp).astype(np.float64)),
    }


def coverage_curve(correct: np.ndarray, confidence: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(coverage, accuracy) when keeping the k most confident examples, k = 1..N."""
    order = np.argsort(-confidence, kind="stable")
    hits = np.cumsum(np.asarray(correct, dtype=np.float64)[order])
    kept = np.arange(1, len(order) + 1)
    return kept / max(len(order), 1), hits / kept


def coverage_at(correct: np.ndarray, confidence: np.ndarray, accuracy: float) -> float:
    """Largest fraction of examples that can be kept with accuracy >= ``accuracy`` (0 if none)."""
    coverage, acc = coverage_curve(correct, confidence)
    ok = np.nonzero(acc >= accuracy)[0]
    return float(coverage[ok[-1]]) if len(ok) else 0.0
