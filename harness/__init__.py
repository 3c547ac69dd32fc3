"""svhn-harness: benchmark harness for multi-digit street-number recognition."""

from pathlib import Path

__version__ = "0.1.0"

RUNS = Path("runs")  # local state of runs and sweeps, and the tracking ledger, under the working directory

# Number encoding shared by every stage (records, prepared files, models, metrics):
MAX_DIGITS = 5  # digit heads; a longer number is the length class ">5"
LENGTH_CLASSES = MAX_DIGITS + 2  # lengths 0..5 and ">5"
NO_DIGIT = 10  # value stored at digit positions beyond a number's length
