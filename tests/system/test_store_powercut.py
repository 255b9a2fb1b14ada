"""The power is cut while the store writer commits results: every result it acknowledged is there
after the next boot, and the encrypted store opens and passes its page check.

The writer is the image's own store service; the test drives it from the debug shell with the
store's socket client (as the workflows do), printing each acknowledgement to the console, so
the host knows exactly what was acknowledged before it kills QEMU. The shell is needed only to
start that client: nothing in the release image writes results on request without an agent.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import pytest

from fieldbox_host.qemu import Machine

pytestmark = [pytest.mark.system, pytest.mark.slow]

BATCH = 5

WRITER = """python3 -c 'import itertools, sys
from fieldbox.services.clients import StoreClient
c = StoreClient(timeout=60)
run = sys.argv[1]
for n in itertools.count():
    rows = [dict(key="pc-%s-%d-%d" % (run, n, i), workflow="powercut", agent="t", item="%d-%d" % (n, i),
                 result=dict(n=n, pad="x" * 200), priority=5) for i in range(BATCH)]
    c.put_results(rows)
    print("acked", run, n, flush=True)
' RUN > /dev/console 2>&1 &"""
"""Batches of results through the store writer; "acked RUN N" once batch N is durable."""


def writer(run: int) -> str:
    return WRITER.replace("BATCH", str(BATCH)).replace("RUN", str(run))


COUNT = (
    "python3 -c 'from fieldbox.services.clients import StoreClient\n"
    "print(\"count\", StoreClient(timeout=60).count(\"powercut\"))'"
)


def stored(machine: Machine) -> int:
    out = machine.run(COUNT, timeout=180).check("counting the results")
    match = re.search(r"count (\d+)", out)
    assert match, out
    return int(match.group(1))


def test_every_acknowledged_result_survives_a_power_cut_and_the_store_opens(
    make_machine: Callable[..., Machine],
) -> None:
    machine = make_machine()
    machine.start()
    machine.wait_ready()
    acked_total = 0
    for run, delay in enumerate((2.5,)):  # one cut in CI: each one more costs a boot (~1 min under TCG)
        machine.run(writer(run)).check("starting the writer")
        machine.wait_for(rf"acked {run} \d+", timeout=120)
        time.sleep(delay)
        machine.kill()  # the power cord, mid-commit
        acked = [int(n) for n in re.findall(rf"acked {run} (\d+)", machine.console_text())]
        assert acked, "nothing was acknowledged before the cut"
        acked_total += (max(acked) + 1) * BATCH
        machine.start()
        machine.wait_ready()
        count = stored(machine)
        print(f"\ncut {run}: {(max(acked) + 1) * BATCH} results acknowledged this run, "
              f"{acked_total} in all; {count} in the store after the boot")  # fmt: skip
        # Every acknowledged batch is there. More may be: the console line of a committed batch can
        # still be on its way out of the serial port when the power goes. Never part of a batch:
        # each is one transaction.
        assert count >= acked_total and count % BATCH == 0, (acked_total, count)
        acked_total = count
    check = machine.run("fieldbox store check", timeout=300)
    assert check.rc == 0, check.output
