"""Multi-process audits: sharding, merging, the launch environment, and two real processes (gloo, CPU)
against the single-process run, sample by sample; a rank killed mid-run resumes to the same result."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from robustaudit.cli import EXIT_OK, EXIT_USAGE, main
from robustaudit.core.errors import UserError
from robustaudit.evaluate import distributed as multiproc
from robustaudit.evaluate.result import ResultMatrix

pytestmark = pytest.mark.usefixtures("one_thread")

#: fgsm and pgd (fixed-eps, keyed random starts) and deepfool (minimal-norm): every kind of column
AUDIT = ["audit", "--model", "digits-cnn", "--attack", "fgsm", "--attack", "pgd:steps=5", "--attack",
         "deepfool:steps=3", "--eps", "0.1,0.2", "--n", "60", "--batch-size", "8", "--device", "cpu",
         "--checks", "off", "--defense", "none"]


# ------------------------------------------------------------------ sharding and the environment
@pytest.mark.parametrize("n, world", [(0, 2), (1, 3), (7, 2), (60, 4), (61, 4)])
def test_shards_cover_every_sample_once_without_padding(n, world):
    ids = list(range(100, 100 + n))
    shards = [multiproc.shard(ids, r, world) for r in range(world)]
    assert sorted(i for s in shards for i in s) == ids
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_detect_reads_torchrun_and_srun():
    assert multiproc.detect({}) is None
    assert multiproc.detect({"RANK": "0", "WORLD_SIZE": "1"}) is None  # a world of one is a plain run
    launch = multiproc.detect({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (launch.rank, launch.world_size, launch.local_rank, launch.launcher) == (3, 4, 1, "torchrun")
    slurm = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_STEP_ID": "0",
             "MASTER_ADDR": "node1", "MASTER_PORT": "29500"}
    launch = multiproc.detect(slurm)
    assert (launch.rank, launch.world_size, launch.local_rank, launch.launcher) == (5, 8, 1, "slurm")
    # the batch script itself (no srun step) is one process, whatever --ntasks says
    assert multiproc.detect({k: v for k, v in slurm.items() if k != "SLURM_STEP_ID"}) is None
    assert multiproc.detect({**slurm, "ROBUSTAUDIT_DISTRIBUTED": "0"}) is None
    with pytest.raises(UserError, match="MASTER_ADDR and MASTER_PORT"):
        multiproc.detect({k: v for k, v in slurm.items() if not k.startswith("MASTER")})
    with pytest.raises(UserError, match="RANK='x' is not an integer"):
        multiproc.detect({"RANK": "x", "WORLD_SIZE": "2"})
    with pytest.raises(UserError, match="rank 2 of world size 2"):
        multiproc.detect({"RANK": "2", "WORLD_SIZE": "2"})


def test_a_fixed_gpu_cannot_be_shared():
    launch = multiproc.Launch(1, 2, 1, "torchrun")
    assert str(multiproc.device_for(launch, "cpu")) == "cpu"
    with pytest.raises(UserError, match="cannot be shared by 2 processes"):
        multiproc.device_for(launch, "cuda:0")


# ------------------------------------------------------------------ merge (in one process)
def _numbers(result: ResultMatrix):
    records = result.records.drop(columns=["seconds"]).to_dict(orient="records")
    examples = [(e.model, e.attack, e.eps, e.sample_id, e.label, e.adv_pred, e.adversarial.tobytes())
                for e in result.examples]
    return records, result.robust_ids, {k: list(v.items()) for k, v in result.minimal_norms.items()}, examples


def test_merged_shards_equal_the_single_process_run_per_sample(digits_cnn, digits_cnn_pgdat):
    from robustaudit.data.digits import digits_split
    from robustaudit.evaluate.api import attack_entries_from
    from robustaudit.evaluate.runner import ModelEntry, run

    data = digits_split("test")
    models = [ModelEntry("std", digits_cnn), ModelEntry("pgdat", digits_cnn_pgdat)]
    attacks = attack_entries_from(["fgsm", "pgd:steps=5", "deepfool:steps=3"])
    ids = list(range(5, 77))
    kw = {"norm": "linf", "batch_size": 8, "device": "cpu", "seed": 3, "example_eps": 0.1}
    whole = run(models, data, attacks, [0.05, 0.1, 0.2], ids=ids, **kw)
    parts = [run(models, data, attacks, [0.05, 0.1, 0.2], ids=multiproc.shard(ids, r, 3), **kw) for r in range(3)]
    merged = multiproc.merge(parts, ids)
    assert _numbers(merged) == _numbers(whole)
    # the examples are real picks, not empty lists compared with empty lists
    assert len(whole.examples) == 2 * 3 * 2 and all(e.sample_id in ids for e in whole.examples)
    assert whole.robust_ids[("pgdat", "worst-case", 0.1)]  # some survivors: the union is exercised


def test_resuming_with_another_world_size_is_refused(tmp_path):
    from robustaudit.evaluate.resume import fingerprint_difference

    assert fingerprint_difference({"processes": 2}, {"processes": 3}) == \
        "the number of processes differs (stored 2, now 3)"
    (tmp_path / "ranks").mkdir()
    (tmp_path / "ranks" / "rank-0.sqlite").touch()
    (tmp_path / "ranks" / "rank-1.sqlite").touch()
    with pytest.raises(UserError, match="holds a run of 2 processes .* torchrun --nproc-per-node=2"):
        multiproc.check_layout(tmp_path, 1, resume=True)
    single = tmp_path / "single"
    single.mkdir()
    (single / "results.sqlite").touch()
    with pytest.raises(UserError, match="holds a single-process run"):
        multiproc.check_layout(single, 2, resume=True)
    multiproc.check_layout(single, 2, resume=False)  # a fresh run of another layout is fine


# ------------------------------------------------------------------ real processes
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args: list[str], out: Path, tag: str = "") -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ROBUSTAUDIT_TEST_TAG": tag}
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    # torchrun's own parser would take --n for one of its flags: `--` ends its options
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={_free_port()}",
           "--master-addr=127.0.0.1", "-m", "robustaudit", "--", *args, "--out", str(out)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _same(a, b) -> bool:
    """Equal, except floats, which may differ by float rounding: DeepFool's minimal norms are
    batch-independent only to about 1e-7 (a shard's batches differ from the single run's)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return a == pytest.approx(b, rel=1e-5, abs=1e-7)
    return a == b


def _doc_numbers(out: Path):
    doc = json.loads((out / "results.json").read_text())
    records = [{k: v for k, v in r.items() if k != "seconds"} for r in doc["records"]]
    with np.load(out / "examples.npz") as z:
        examples = (json.loads(str(z["meta"])), z["adversarial"].tobytes())
    return records, doc["robust_ids"], doc["minimal_norms"], examples


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    assert main([*AUDIT, "--out", str(out)]) == EXIT_OK
    return out


@pytest.mark.slow
def test_two_processes_equal_one_per_sample(tmp_path, reference):
    proc = _torchrun(AUDIT, tmp_path)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_OK, stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "ranks").iterdir() if p.suffix == ".sqlite") == \
        ["rank-0.sqlite", "rank-1.sqlite"]
    assert not (tmp_path / "results.sqlite").exists()  # the single-process layout is left alone
    assert _same(_doc_numbers(tmp_path), _doc_numbers(reference))
    # each rank stored only its own shard, every sample exactly once
    seen = []
    for k in range(2):
        with sqlite3.connect(tmp_path / "ranks" / f"rank-{k}.sqlite") as db:
            seen += [r[0] for r in db.execute("SELECT sample_id FROM clean")]
            assert db.execute("SELECT value FROM meta WHERE key = 'finished'").fetchone()[0] == "true"
    assert sorted(seen) == list(range(60))
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["provenance"]["processes"]["world_size"] == 2
    assert stdout.count("Robust accuracy") == 1  # one table: rank 0 prints, rank 1 is silent


def _pid_of_rank(tag: str, rank: int) -> int | None:
    """The worker process of ``rank`` in the torchrun job tagged ``tag`` (from /proc/PID/environ)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = dict(kv.split("=", 1) for kv in (entry / "environ").read_text().split("\0") if "=" in kv)
        except OSError:
            continue
        if env.get("ROBUSTAUDIT_TEST_TAG") == tag and env.get("RANK") == str(rank) and "LOCAL_RANK" in env:
            return int(entry.name)
    return None


def _adv_batches(path: Path) -> int:
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
            return db.execute("SELECT COUNT(*) FROM adv_batches").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


@pytest.mark.slow
def test_a_killed_rank_resumes_to_the_same_result(tmp_path, reference):
    tag = uuid.uuid4().hex
    proc = _torchrun(AUDIT, tmp_path, tag)
    try:
        deadline = time.monotonic() + 120
        while _adv_batches(tmp_path / "ranks" / "rank-1.sqlite") < 2:
            assert proc.poll() is None, proc.stderr.read()[-2000:]
            assert time.monotonic() < deadline, "rank 1 committed no attack batch within 120 s"
            time.sleep(0.01)
        pid = _pid_of_rank(tag, 1)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)  # no handler, no cleanup: a crashed rank
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != EXIT_OK
    assert not (tmp_path / "results.json").exists()
    resumed = _torchrun([*AUDIT, "--resume"], tmp_path)
    _, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == EXIT_OK, stderr[-2000:]
    assert "stored batches reused" in stderr
    assert _same(_doc_numbers(tmp_path), _doc_numbers(reference))
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["provenance"]["resume"]["reused_batches"] > 0


def test_resume_of_a_multi_process_run_without_a_launcher_says_how(tmp_path, capsys):
    (tmp_path / "ranks").mkdir()
    for k in range(2):
        (tmp_path / "ranks" / f"rank-{k}.sqlite").touch()
    assert main([*AUDIT, "--out", str(tmp_path), "--resume"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "holds a run of 2 processes" in err and "Traceback" not in err


# ------------------------------------------------------------------ failures are agreed (collectives faked)
def _ctx(rank: int) -> multiproc.DistContext:
    import torch

    return multiproc.DistContext(multiproc.Launch(rank, 2, rank, "torchrun"), torch.device("cpu"), "gloo")


def test_a_failure_on_another_rank_stops_this_one_with_its_message(monkeypatch):
    import torch.distributed as dist

    def gather(out, mine, other):
        out[0], out[1] = mine, other

    # rank 0 succeeded, rank 1 refused its store: rank 0 raises rank 1's one line
    monkeypatch.setattr(dist, "all_gather_object", lambda out, mine: gather(out, mine, ("user", "bad store")))
    with pytest.raises(UserError, match="^rank 1: bad store$"):
        multiproc.agree(_ctx(0), lambda: 42)
    monkeypatch.setattr(dist, "all_gather_object", lambda out, mine: gather(out, mine, None))
    assert multiproc.agree(_ctx(0), lambda: 42) == 42
    # an internal error elsewhere is an internal error here too (exit 3 on every rank), Ctrl-C an interrupt
    monkeypatch.setattr(dist, "all_gather_object", lambda out, mine: gather(out, mine, ("internal", "KeyError: 3")))
    with pytest.raises(multiproc.RemoteFailure, match="rank 1 failed: KeyError: 3"):
        multiproc.agree(_ctx(0), lambda: 42)
    monkeypatch.setattr(dist, "all_gather_object", lambda out, mine: gather(out, mine, ("interrupt", "")))
    with pytest.raises(KeyboardInterrupt):
        multiproc.agree(_ctx(0), lambda: 42)


def test_rank_0_outcome_reaches_the_other_ranks(monkeypatch):
    import torch.distributed as dist

    sent: list = []
    monkeypatch.setattr(dist, "broadcast_object_list", lambda box, src: sent.append(list(box)))
    multiproc.send_outcome(_ctx(0), failure=UserError("checks failed"))
    monkeypatch.setattr(dist, "broadcast_object_list", lambda box, src: box.__setitem__(0, sent[-1][0]))
    with pytest.raises(UserError, match="^checks failed$"):
        multiproc.receive_outcome(_ctx(1))
    monkeypatch.setattr(dist, "broadcast_object_list", lambda box, src: sent.append(list(box)))
    multiproc.send_outcome(_ctx(0), result="the matrix")
    monkeypatch.setattr(dist, "broadcast_object_list", lambda box, src: box.__setitem__(0, sent[-1][0]))
    assert multiproc.receive_outcome(_ctx(1)) == "the matrix"


def test_interrupted_multi_process_run_says_how_to_continue(tmp_path):
    from robustaudit.cli import _interrupted
    from robustaudit.evaluate.store import Store

    for k in range(2):
        path = multiproc.rank_store_path(tmp_path, k)
        path.parent.mkdir(parents=True, exist_ok=True)
        with Store(path) as store:
            store.write_clean("m", [k], [0], [0], data_sha256="x")
    line = _interrupted(str(tmp_path), ["audit"], world_size=2)
    assert "2 finished batches are stored in" in line and "(2 processes)" in line and "--resume" in line


def test_distributed_without_a_launcher_is_a_plain_audit(digits_cnn, digits_test, monkeypatch):
    from robustaudit import audit

    for key in ("RANK", "WORLD_SIZE", "SLURM_PROCID"):
        monkeypatch.delenv(key, raising=False)
    result = audit(digits_cnn, digits_test, attacks="fgsm", eps=0.1, device="cpu", checks="off", cost=False,
                   distributed=True)
    assert "processes" not in result.provenance and result.records["n"].iloc[0] == len(digits_test[0])
