"""The objective, decoding and metrics against independent numpy computations."""

import keras  # noqa: E402
import numpy as np
import pytest

from harness import LOGITS
from harness.models import heads as metrics
from harness.models.heads import (
    SequenceLoss,
    coverage_at,
    decode,
    evaluate_arrays,
    sequence_loss,
)


def np_log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def reference_loss(y, logits, smoothing=0.0):
    """Cross-entropy of each head against its (smoothed) one-hot target, summed over the present heads."""
    lp_len = np_log_softmax(logits[:, :7])
    lp_dig = np_log_softmax(logits[:, 7:].reshape(-1, 5, 10))

    def ce(lp, true):
        target = np.full(len(lp), smoothing / len(lp))
        target[true] += 1.0 - smoothing
        return -(target * lp).sum()

    total = []
    for i, row in enumerate(y):
        L = row[0]
        nll = ce(lp_len[i], L)
        for p in range(min(L, 5)):
            nll += ce(lp_dig[i, p], row[1 + p])
        total.append(nll)
    return float(np.mean(total))


def reference_decode(logits):
    lp_len = np_log_softmax(logits[:, :7])
    lp_dig = np_log_softmax(logits[:, 7:].reshape(-1, 5, 10))
    out = []
    for i in range(len(logits)):  # brute force over lengths: log P(L) + sum_{p<L} max log P(X_p)
        scores = [lp_len[i, L] + lp_dig[i, : min(L, 5)].max(axis=-1).sum() for L in range(7)]
        out.append(int(np.argmax(scores)))
    return np.array(out)


def random_batch(n=64, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, (n, LOGITS)).astype("float32")
    lengths = rng.integers(0, 7, n)
    digits = np.full((n, 5), 10)
    for i, L in enumerate(lengths):
        digits[i, : min(L, 5)] = rng.integers(0, 10, min(L, 5))
    return np.concatenate([lengths[:, None], digits], axis=1).astype("int32"), logits


def test_loss_matches_reference_and_ignores_heads_beyond_length():
    y, logits = random_batch()
    got = float(keras.ops.convert_to_numpy(sequence_loss(y, logits)))
    assert got == pytest.approx(reference_loss(y, logits), rel=1e-5)
    # changing digit heads at positions beyond each true length must not change the loss
    changed = logits.copy()
    for i, L in enumerate(y[:, 0]):
        for p in range(min(L, 5), 5):
            changed[i, 7 + 10 * p: 17 + 10 * p] += np.random.default_rng(i).normal(0, 5, 10)
    again = float(keras.ops.convert_to_numpy(sequence_loss(y, changed)))
    assert again == pytest.approx(got, rel=1e-5)


def test_label_smoothing_matches_smoothed_targets_and_serializes_with_the_model(tmp_path):
    y, logits = random_batch(seed=2)
    plain, smoothed = (float(keras.ops.convert_to_numpy(SequenceLoss(e)(y, logits))) for e in (0.0, 0.1))
    assert plain == pytest.approx(reference_loss(y, logits), rel=1e-5)
    assert smoothed == pytest.approx(reference_loss(y, logits, 0.1), rel=1e-5)
    # a confident, right model pays for its confidence under smoothing
    sharp = logits.copy()
    for i, row in enumerate(y):
        sharp[i, row[0]] += 20.0
        for p in range(min(row[0], 5)):
            sharp[i, 7 + 10 * p + row[1 + p]] += 20.0
    sharp_plain, sharp_smoothed = (float(keras.ops.convert_to_numpy(SequenceLoss(e)(y, sharp))) for e in (0.0, 0.1))
    assert sharp_plain < 0.01 and sharp_smoothed > 1.0
    assert sharp_smoothed == pytest.approx(reference_loss(y, sharp, 0.1), rel=1e-5)
    # a compiled model saved with the loss loads with it, smoothing included
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(LOGITS)])
    model.compile(optimizer="adam", loss=SequenceLoss(0.1))
    model.optimizer.build(model.trainable_variables)  # saved as built, so it loads without a warning
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert isinstance(loaded.loss, SequenceLoss) and loaded.loss.label_smoothing == 0.1


def test_decode_picks_the_joint_most_likely_length():
    _, logits = random_batch(256, seed=1)
    length, digits, _ = (keras.ops.convert_to_numpy(t) for t in decode(logits))
    np.testing.assert_array_equal(length, reference_decode(logits))
    heads = logits[:, 7:].reshape(-1, 5, 10).argmax(-1)
    for i, L in enumerate(length):
        k = min(L, 5)
        np.testing.assert_array_equal(digits[i, :k], heads[i, :k])
        assert (digits[i, k:] == 10).all()


def perfect_logits(y, margin=20.0):
    logits = np.zeros((len(y), LOGITS), dtype="float32")
    for i, row in enumerate(y):
        logits[i, row[0]] = margin
        for p in range(5):
            logits[i, 7 + 10 * p + min(row[1 + p], 9)] = margin
    return logits


def test_evaluate_arrays_counts_sequence_length_and_positions():
    y = np.array([[1, 4, 10, 10, 10, 10], [2, 1, 9, 10, 10, 10], [3, 1, 2, 3, 10, 10], [2, 5, 5, 10, 10, 10]],
                 dtype="int32")
    logits = perfect_logits(y)
    # example 1: wrong second digit; example 3: wrong length (predicts 1 instead of 2)
    logits[1, 7 + 10 * 1 + 9], logits[1, 7 + 10 * 1 + 8] = 0.0, 20.0
    logits[3, 2], logits[3, 1] = 0.0, 20.0
    m = evaluate_arrays(y, logits)
    assert m["sequence_accuracy"] == pytest.approx(2 / 4)
    assert m["length_accuracy"] == pytest.approx(3 / 4)
    assert m["digit1_accuracy"] == 1.0 and m["digit1_examples"] == 4
    assert m["digit2_accuracy"] == pytest.approx(2 / 3) and m["digit2_examples"] == 3
    assert m["digit3_accuracy"] == 1.0 and m["digit3_examples"] == 1
    assert np.isnan(m["digit4_accuracy"]) and m["digit4_examples"] == 0
    assert m["digit_accuracy"] == pytest.approx(7 / 8)


def test_keras_metrics_agree_with_evaluation_over_batches():
    y, logits = random_batch(200, seed=3)
    logits[:120] = perfect_logits(y[:120])  # a mix of right and wrong
    expected = evaluate_arrays(y, logits)
    for metric in metrics.keras_metrics():
        for start in range(0, 200, 64):  # accumulated over uneven batches
            metric.update_state(y[start:start + 64], logits[start:start + 64])
        got = float(keras.ops.convert_to_numpy(metric.result()))
        want = expected[metric.name]
        assert got == pytest.approx(want, abs=1e-6) or (np.isnan(got) and np.isnan(want)), metric.name


def test_coverage_at_rejects_least_confident():
    correct = np.array([1, 1, 0, 1, 0, 1, 1, 1, 1, 1], dtype=float)
    confidence = np.array([0.99, 0.98, 0.2, 0.97, 0.1, 0.96, 0.95, 0.94, 0.93, 0.92])
    assert coverage_at(correct, confidence, 1.0) == pytest.approx(0.8)  # drop the two wrong ones
    assert coverage_at(correct, confidence, 0.8) == pytest.approx(1.0)
    assert coverage_at(np.zeros(3), np.ones(3), 0.98) == 0.0
