"""The store as a resume source: batch records round-trip exactly, a batch is stored whole or not at
all, and a run resumed from a partial store reproduces the uninterrupted run number for number,
re-attacking exactly the batches that were missing."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest
import torch

from robustaudit.attacks.gradient import PGD
from robustaudit.attacks.minimal import DeepFool
from robustaudit.core.errors import UserError
from robustaudit.evaluate.result import Example
from robustaudit.evaluate.runner import AttackEntry, ModelEntry, run
from robustaudit.evaluate.store import Store, batch_key, state_dict_sha256, tensors_sha256


pytestmark = pytest.mark.usefixtures("one_thread")


def test_adv_batch_round_trip_with_examples(tmp_path):
    x = np.random.default_rng(0).random((1, 8, 8), dtype=np.float32)
    ex = Example("m", "pgd", 0.1, x, x + 0.1, 3, 3, 5)
    with Store(tmp_path / "s.sqlite") as store:
        assert store.adv_batch("m", "pgd", 0.1, [4, 2, 9]) is None
        store.write_adv("m", "pgd", 0.1, [4, 2, 9], [3, 1, 0], [5, 1, 0], [0.1, 0.0999999, 0.05],
                        seconds=1.25, examples=[(4, ex)])
        got = store.adv_batch("m", "pgd", 0.1, [4, 2, 9])
        assert store.adv_batch("m", "pgd", 0.1, [2, 4, 9]) is None  # exact ids, in order: another batch
        assert store.adv_batch("m", "pgd", 0.2, [4, 2, 9]) is None
        assert store.count_batches() == 1
    assert got.ids == [4, 2, 9] and got.preds == [5, 1, 0] and got.correct == [False, True, True]
    assert got.norms == [0.1, 0.0999999, 0.05] and got.seconds == 1.25
    (sid, back), = got.examples
    assert sid == 4 and (back.model, back.attack, back.eps, back.label, back.clean_pred, back.adv_pred) == (
        "m", "pgd", 0.1, 3, 3, 5)
    assert back.clean.dtype == np.float32 and np.array_equal(back.clean, x) and np.array_equal(back.adversarial, x + 0.1)


def test_meta_clean_batches_and_reset(tmp_path):
    with Store(tmp_path / "s.sqlite") as store:
        assert store.get_meta("finished") is None and store.get_meta("finished", False) is False
        store.put_meta("checks", [{"id": "logits", "status": "pass"}])
        store.write_clean("m", [0, 1, 2], [1, 1, 0], [1, 0, 0], data_sha256="abc")
        assert store.clean_batch("m", [0, 1, 2]) == ("abc", [1, 0, 0])
        assert store.clean_batch("m", [0, 1]) is None and store.clean_batch("other", [0, 1, 2]) is None
        assert store.get_meta("checks") == [{"id": "logits", "status": "pass"}]
        store.reset()
        assert store.count_batches() == 0 and store.get_meta("checks") is None
        assert store.query("SELECT COUNT(*) FROM clean")[0][0] == 0


def test_a_batch_is_stored_whole_or_not_at_all(tmp_path):
    ex = Example("m", "pgd", 0.1, np.zeros((1, 2, 2), np.float32), np.zeros((1, 2, 2), np.float32), 0, 0, 1)
    with Store(tmp_path / "s.sqlite") as store:
        # the examples insert fails after the adv rows went in: the whole batch must roll back
        store.query("CREATE TRIGGER boom BEFORE INSERT ON examples BEGIN SELECT RAISE(ABORT, 'disk full'); END")
        with pytest.raises(sqlite3.IntegrityError, match="disk full"):
            store.write_adv("m", "pgd", 0.1, [0, 1], [0, 0], [1, 1], [0.1, 0.1], seconds=1.0, examples=[(0, ex)])
        assert store.query("SELECT COUNT(*) FROM adv")[0][0] == 0
        assert store.query("SELECT COUNT(*) FROM examples")[0][0] == 0 and store.count_batches() == 0
        assert store.adv_batch("m", "pgd", 0.1, [0, 1]) is None


def test_hashes_see_every_byte():
    x = torch.rand(4, 1, 8, 8)
    y = torch.tensor([0, 1, 2, 3])
    base = tensors_sha256(x, y)
    x2 = x.clone()
    x2[3, 0, 7, 7] = torch.nextafter(x2[3, 0, 7, 7], torch.tensor(2.0))  # one ulp
    assert tensors_sha256(x2, y) != base and tensors_sha256(x, y.flip(0)) != base
    assert tensors_sha256(x.clone(), y.clone()) == base
    net = torch.nn.Linear(3, 2)
    before = state_dict_sha256(net)
    with torch.no_grad():
        net.bias[0] += 1e-7
    assert state_dict_sha256(net) != before
    assert len(before) == 64 and batch_key([3, 10, 2]) == "3,10,2"


class RecordingPGD(PGD):
    """PGD that records the exact batches it attacks."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.seen: list[tuple[float, list[int]]] = []

    def _run(self, model, x, y, threat, targets, ids, seed, task):
        self.seen.append((threat.eps, ids.tolist()))
        return super()._run(model, x, y, threat, targets, ids, seed, task)


def _numbers(result):
    records = result.records.drop(columns=["seconds"]).to_dict(orient="records")
    examples = [(e.model, e.attack, e.eps, e.label, e.adv_pred, e.clean.tobytes(), e.adversarial.tobytes())
                for e in result.examples]
    return records, result.robust_ids, result.minimal_norms, examples


def test_resume_from_a_partial_store_reproduces_the_run(digits_cnn_pgdat, tmp_path):
    from robustaudit.data.digits import digits_split

    data = digits_split("test")
    grid = [0.1, 0.2]

    def attacks():
        return [AttackEntry("pgd", RecordingPGD(steps=5)), AttackEntry("deepfool", DeepFool(steps=3))]

    path = tmp_path / "s.sqlite"
    first = attacks()
    with Store(path) as store:
        full = run([ModelEntry("m", digits_cnn_pgdat)], data, first, grid, ids=list(range(64)), batch_size=16,
                   store=store, example_eps=0.1)
    pgd_batches = first[0].attack.seen
    assert len(pgd_batches) == 8 and full.examples  # 4 batches at 0.1, 4 on the survivors at 0.2
    # a crash after the third PGD batch: what was committed later is not there
    db = sqlite3.connect(path)
    kept = [batch_key(ids) for _, ids in pgd_batches[:3]]
    rows = db.execute("SELECT attack, eps, ids FROM adv_batches").fetchall()
    for attack, eps, ids in rows:
        if not (attack == "pgd" and ids in kept):
            db.execute("DELETE FROM adv_batches WHERE attack = ? AND eps = ? AND ids = ?", (attack, eps, ids))
            db.execute(f"DELETE FROM adv WHERE attack = ? AND eps = ? AND sample_id IN ({ids})", (attack, eps))
            db.execute(f"DELETE FROM examples WHERE attack = ? AND eps = ? AND sample_id IN ({ids})", (attack, eps))
    db.commit()
    db.close()

    second = attacks()
    with Store(path) as store:
        resumed = run([ModelEntry("m", digits_cnn_pgdat)], data, second, grid, ids=list(range(64)), batch_size=16,
                      store=store, example_eps=0.1, reuse=True)
    assert resumed.provenance["resume"] == {"reused_batches": 4 + 3, "computed_batches": 5 + 4}
    assert second[0].attack.seen == pgd_batches[3:]  # exactly the missing batches, cut the same way
    assert _numbers(resumed) == _numbers(full)


def test_resume_refuses_changed_data(digits_cnn, tmp_path):
    from robustaudit.data.base import TensorData
    from robustaudit.data.digits import digits_split

    x, y = digits_split("test").load(range(32))
    entry = [AttackEntry("pgd", PGD(steps=2))]
    with Store(tmp_path / "s.sqlite") as store:
        run([ModelEntry("m", digits_cnn)], TensorData(x, y, name="d"), entry, [0.1], batch_size=16, store=store)
        x2 = x.clone()
        x2[20] = 1 - x2[20]  # second batch
        with pytest.raises(UserError, match=r"data changed since the stored run \(samples 16\.\.31 differ\)"):
            run([ModelEntry("m", digits_cnn)], TensorData(x2, y, name="d"), entry, [0.1], batch_size=16,
                store=store, reuse=True)
