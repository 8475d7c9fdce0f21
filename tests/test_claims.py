"""Claims (app/claims.py): a stale claim is taken over by exactly one of many concurrent takers,
round after round; live claims are kept; the lease comes from a validated environment variable."""

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from vmdiff_jax.app import claims

TAKERS = 8
ROUNDS = 3

# A taker: waits for a common start time, tries the claim, prints the answer, then stays alive
# (holding what it won) until its stdin is closed, so that a winner is never dead - and its
# claim stale again - while the other takers of its round are still trying.
TAKER = ("import sys, time\nfrom vmdiff_jax.app import claims\n"
         "start = float(sys.argv[2])\n"
         "time.sleep(max(0.0, start - time.time()))\n"
         "print(claims.acquire(sys.argv[1]), flush=True)\n"
         "sys.stdin.read()\n")


def _dead_pid() -> int:
    p = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(p.stdout)


def _race(path, n=TAKERS):
    """n taker processes started together on `path`: their answers and pids (alive until released)."""
    start = time.time() + 1.5  # every taker has imported claims by then
    procs = [subprocess.Popen([sys.executable, "-c", TAKER, str(path), repr(start)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for _ in range(n)]
    try:
        got = [p.stdout.readline().strip() for p in procs]
    except BaseException:
        for p in procs:
            p.kill()
        raise
    return got, procs


def _end(procs):
    for p in procs:
        p.stdin.close()
    for p in procs:
        p.wait(timeout=60)


def test_stale_claim_is_taken_over_exactly_once_per_round(tmp_path):
    """Round 1: a dead process's claim; rounds 2, 3: the claim of the previous round's winner,
    now dead. Each round TAKERS processes race: exactly one wins and the claim is then its own."""
    path = tmp_path / "claims" / "p.claim"
    path.parent.mkdir()
    path.write_text(json.dumps({"pid": _dead_pid(), "host": claims.HOST, "time": 0, "token": "t0"}))
    for k in range(ROUNDS):
        got, procs = _race(path)
        try:
            assert sorted(got) == ["False"] * (TAKERS - 1) + ["True"], (k, got)
            winner = procs[got.index("True")].pid
            assert json.loads(path.read_text())["pid"] == winner
            # while the winner lives, its claim is not stale: nobody else gets it
            assert not claims.acquire(path)
        finally:
            _end(procs)
    assert len(list(path.parent.glob("p.claim.takeover-*"))) == ROUNDS  # one takeover per stale claim
    assert not list(path.parent.glob("*.tmp"))  # every fresh claim was placed whole


def test_free_claim_is_created_by_exactly_one(tmp_path):
    path = tmp_path / "claims" / "new.claim"
    got, procs = _race(path)
    try:
        assert sorted(got) == ["False"] * (TAKERS - 1) + ["True"], got
        assert json.loads(path.read_text())["pid"] == procs[got.index("True")].pid
    finally:
        _end(procs)


def test_threads_of_one_process_claim_once(tmp_path):
    """Within one process, a claim it holds is not taken by its other attempts either."""
    path = tmp_path / "t.claim"
    results, go = [], threading.Event()

    def take():
        go.wait()
        results.append(claims.acquire(path))

    threads = [threading.Thread(target=take) for _ in range(8)]
    for t in threads:
        t.start()
    go.set()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]
    claims.release(path)
    assert not path.exists()


def test_live_and_expired_claims(tmp_path):
    live = tmp_path / "q.claim"
    live.write_text(json.dumps({"pid": os.getppid(), "host": claims.HOST, "time": time.time(), "token": "t1"}))
    assert not claims.acquire(live)
    claims.release(live)  # not ours: left alone
    assert json.loads(live.read_text())["token"] == "t1"
    old = tmp_path / "r.claim"  # another host's claim, not refreshed for longer than the lease
    old.write_text(json.dumps({"pid": 1, "host": "elsewhere", "time": 0, "token": "t2"}))
    os.utime(old, (time.time() - 2 * claims.LEASE_S,) * 2)
    assert claims.acquire(old) and json.loads(old.read_text())["pid"] == os.getpid()
    fresh = tmp_path / "s.claim"  # another host's claim refreshed within the lease
    fresh.write_text(json.dumps({"pid": 1, "host": "elsewhere", "time": 0, "token": "t3"}))
    assert not claims.acquire(fresh)
    mine = tmp_path / "m.claim"  # this process's pid but a token it does not hold (an earlier run): stale
    mine.write_text(json.dumps({"pid": os.getpid(), "host": claims.HOST, "time": 0, "token": "t4"}))
    assert claims.acquire(mine) and json.loads(mine.read_text())["token"] != "t4"


def test_a_claim_taken_over_is_not_released_by_its_old_holder(tmp_path):
    path = tmp_path / "o.claim"
    assert claims.acquire(path)
    mine = json.loads(path.read_text())["token"]
    path.write_text(json.dumps({"pid": 1, "host": "elsewhere", "time": 0, "token": "other"}))  # taken over elsewhere
    claims.release(path)
    assert json.loads(path.read_text())["token"] == "other"
    assert not claims.holds("other") and claims.holds(mine)


@pytest.mark.parametrize("value", ["0", "-5", "0.5", "nan", "inf", "-inf", "ten", "1e400", " "])
def test_lease_must_be_a_finite_number_of_seconds(value):
    env = {claims.LEASE_ENV: value}
    if value.strip() == "":
        assert claims.lease_s(env) == claims.LEASE_S
        return
    with pytest.raises(claims.LeaseError) as e:
        claims.lease_s(env)
    assert claims.LEASE_ENV in str(e.value) and repr(value) in str(e.value) and "\n" not in str(e.value)


def test_lease_values_and_import_with_a_bad_lease():
    assert claims.lease_s({}) == 600.0 and claims.lease_s({claims.LEASE_ENV: "30"}) == 30.0
    assert claims.lease_s({claims.LEASE_ENV: "1.5"}) == 1.5
    p = subprocess.run([sys.executable, "-c", "from vmdiff_jax.app import claims, batch; print('ok')"],
                       env=dict(os.environ, VMDIFF_CLAIM_LEASE_S="banana"), capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.strip() == "ok" and p.stderr == "", p.stderr  # no traceback at import


def test_a_forgotten_claim_stays_but_is_stale_to_this_process(tmp_path):
    """A done pair's claim: its file stays (other runs see a live holder), this process may take it again."""
    path = tmp_path / "done.claim"
    assert claims.acquire(path)
    token = json.loads(path.read_text())["token"]
    claims.forget(path)
    assert path.exists() and not claims.holds(token)
    assert claims.acquire(path) and json.loads(path.read_text())["token"] != token
