"""Plain-framework reference implementations: yardsticks for the benchmarks, never imported by harness/."""
