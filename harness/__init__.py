"""svhn-harness: benchmark harness for multi-digit street-number recognition."""

from pathlib import Path

__version__ = "0.1.0"

RUNS = Path("runs")  # local state of runs and sweeps, and the tracking ledger, under the working directory

# Number encoding shared by every stage (records, prepared files, models, metrics):
MAX_DIGITS = 5  # digit heads; a longer number is the length class ">5"
LENGTH_CLASSES = MAX_DIGITS + 2  # lengths 0..5 and ">5"
NO_DIGIT = 10  # value stored at digit positions beyond a number's length
LOGITS = LENGTH_CLASSES + MAX_DIGITS * 10  # the heads' outputs: length classes, then 10 classes per digit

# Dataset folders without a test folder: test is one of this many folds of train (data.heldout_fold)
HELDOUT_FOLDS = 4

# Published whole-number (sequence) accuracies on SVHN's test set that results are measured against;
# only a result on SVHN's test split is comparable with them.
GOODFELLOW_2014 = 0.9603  # Goodfellow et al. 2014
GOODFELLOW_2014_DIGIT = 0.9784  # its per-digit accuracy
REPORT_CONV_ONLY = 0.924  # the later report's conv-only variant
