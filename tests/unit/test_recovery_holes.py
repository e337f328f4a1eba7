"""The hole finder of ``tests.e2e.recovery_holes`` on log lines shaped like a traced worker's."""

from tests.e2e.recovery_holes import holes

READING = """[INFO] [^---Recovery]: standby offsets at start of reading:
+Reading Starts At - Standby------------------------------------------+-----------+--------+
| topic                                                               | partition | offset |
+---------------------------------------------------------------------+-----------+--------+
| app-set-changelog                                                   | 2         | 485    |
| \u3003                                                                  | 3         | 373    |
+---------------------------------------------------------------------+-----------+--------+
[INFO] [^---Recovery]: Resuming flow...
"""


def test_a_batch_that_starts_past_the_reading_position_is_a_hole():
    log = READING + "[INFO] trace recovery applied {2: [486, 508], 3: [698, 729]}, skipped 0\n"
    assert holes(log) == [(3, 373, 698)]


def test_contiguous_batches_and_a_fresh_partition_are_not_holes():
    log = READING + (
        "[INFO] trace recovery applied {2: [486, 500]}, skipped 0\n"
        "[INFO] trace recovery applied {2: [501, 508], 3: [374, 400]}, skipped 0\n"
        "[INFO] trace recovery applied {5: [0, 17]}, skipped 0\n"  # never in a reading table: nothing to compare
    )
    assert holes(log) == []
