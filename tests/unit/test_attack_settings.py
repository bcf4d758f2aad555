"""The settings declarations (attacks/settings.py): one per attack, validating, capping, documenting."""

from __future__ import annotations

import inspect

import pytest

from robustaudit.attacks.base import Attack
from robustaudit.attacks.registry import attack_class, from_spec, get, names, register, valid_settings
from robustaudit.attacks.settings import MAX_QUERIES, MAX_STEPS, Float, Int, Settings
from robustaudit.cli import main
from robustaudit.core.errors import UserError

#: every registered attack class, classification and segmentation (wrappers included)
CLASSES = sorted({(n, t) for t in ("classification", "segmentation") for n in names(wrappers=True, task=t)})

#: spec -> the one line it must get: the setting, the value and the allowed range
BAD = [
    ("pgd:steps=100000000000000000000", "pgd: steps must be an integer >= 1 and <= 100000, got 100000000000000000000"),
    ("pgd:steps=1e20", "pgd: steps must be an integer >= 1 and <= 100000, got 1e+20"),
    ("pgd:steps=2.5", "pgd: steps must be an integer >= 1 and <= 100000, got 2.5"),
    ("pgd:restarts=-1", "pgd: restarts must be an integer >= 1 and <= 1000, got -1"),
    ("pgd:compact_every=0", "pgd: compact_every must be an integer >= 1 and <= 100000, got 0"),
    ("pgd:step_size=inf", "pgd: step_size must be a finite number, got inf"),
    ("pgd:rel_step_size=0", "pgd: rel_step_size must be > 0, got 0"),
    ("pgd:random_start=1", "pgd: random_start is a switch: true or false, got 1"),
    ("pgd:loss=dlr", "pgd: loss must be one of ce, margin, got 'dlr'"),
    ("pgd:step_size=0.1,rel_step_size=0.1", "pgd: give step_size or rel_step_size, not both"),
    ("mifgsm:step_size=0.1,rel_step_size=0.1", "mifgsm: give step_size or rel_step_size, not both"),
    ("bim:steps=0", "bim: steps must be an integer >= 1 and <= 100000, got 0"),
    ("mifgsm:decay=-1", "mifgsm: decay must be >= 0, got -1"),
    ("square:queries=1000000000000", "square: queries must be an integer >= 1 and <= 1000000, got 1000000000000"),
    ("square:p_init=1.5", "square: p_init must be > 0 and <= 1, got 1.5"),
    ("apgd:rho=2", "apgd: rho must be >= 0 and <= 1, got 2"),
    ("apgd-t:n_target_classes=1000000", "apgd-t: n_target_classes must be an integer >= 1 and <= 100000"),
    ("autoattack:queries=0", "autoattack: queries must be an integer >= 1 and <= 1000000, got 0"),
    ("fast:targets=abc", "fast: targets must be an integer >= 1 and <= 100000, got 'abc'"),
    ("cw:binary_search_steps=5000", "cw: binary_search_steps must be an integer >= 1 and <= 1000, got 5000"),
    ("deepfool:candidates=1", "deepfool: candidates must be an integer >= 2 and <= 100000, got 1"),
    ("fab-t:eta=0.5", "fab-t: eta must be >= 1, got 0.5"),
    ("fab-t:restarts=5000", "fab-t: restarts must be an integer >= 1 and <= 1000, got 5000"),
    ("patch:rotation=200", "patch: rotation must be >= 0 and <= 180, got 200"),
    ("patch:contrast=1", "patch: contrast must be >= 0 and < 1, got 1"),
    ("patch:batch_size=100000", "patch: batch_size must be an integer >= 1 and <= 65536, got 100000"),
    ("atn:epochs=100000", "atn: epochs must be an integer >= 1 and <= 10000, got 100000"),
    ("atn:samples=0", "atn: samples must be an integer >= 1 and <= 100000000 (or none), got 0"),
    ("advgan:target=-1", "advgan: target must be a class index >= 0 and <= 100000 (or none), got -1"),
    ("eot:k=100000(pgd)", "eot: k must be an integer >= 1 and <= 10000, got 100000"),
    ("eot:k=0(pgd)", "eot: k must be an integer >= 1 and <= 10000, got 0"),
]


@pytest.mark.parametrize("spec,line", BAD, ids=[b[0] for b in BAD])
def test_bad_settings_get_one_line(spec: str, line: str) -> None:
    with pytest.raises(UserError) as info:
        from_spec(spec)
    message = str(info.value)
    assert "\n" not in message and message.startswith(line), message


@pytest.mark.parametrize("spec,line", [
    ("seg-uap:iterations=1000000", "seg-uap: iterations must be an integer >= 1 and <= 100000, got 1000000"),
    ("segpgd:restarts=0", "segpgd: restarts must be an integer >= 1 and <= 1000, got 0"),
    ("dag:max_iter=2.0", "dag: max_iter must be an integer >= 1 and <= 100000, got 2.0"),
    ("dag:active=all", "dag: active must be one of not-target, original, got 'all'"),
    ("segpgd:step_size=0.1,rel_step_size=0.1", "segpgd: give step_size or rel_step_size, not both"),
])
def test_bad_segmentation_settings_get_one_line(spec: str, line: str) -> None:
    with pytest.raises(UserError) as info:
        from_spec(spec, task="segmentation")
    assert str(info.value).startswith(line), str(info.value)


def test_the_caps_themselves_are_accepted() -> None:
    assert get("pgd", steps=MAX_STEPS).steps == MAX_STEPS
    assert get("square", queries=MAX_QUERIES).queries == MAX_QUERIES
    assert from_spec("eot:k=10000(fgsm)").k == 10_000
    # a float setting is stored as a float, whatever number it was given as
    assert get("pgd", step_size=1).step_size == 1.0 and isinstance(get("pgd", step_size=1).step_size, float)


def _keywords(cls: type) -> list[tuple[str, object]]:
    params = inspect.signature(cls.__init__).parameters.values()
    return [(p.name, p.default) for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]


@pytest.mark.parametrize("name,task", CLASSES, ids=[f"{t}:{n}" for n, t in CLASSES])
def test_every_attack_declares_exactly_its_init_keywords(name: str, task: str) -> None:
    cls = attack_class(name, task=task)
    assert not cls.SETTINGS.inferred, f"{cls.__name__} has no SETTINGS declaration"
    declared = [(s.name, s.default) for s in cls.SETTINGS if s.init]
    assert declared == _keywords(cls)
    for s in cls.SETTINGS:
        assert s.doc and "\n" not in s.doc, (name, s.name)
        if s.type is int:  # every count has a cap
            assert s.high is not None and s.low is not None, (name, s.name)
        if s.default is not None and s.init:  # the default passes its own declaration
            assert s.check(name, s.default) == s.default


@pytest.mark.parametrize("name", names())
def test_repr_and_settings_show_the_declared_settings(name: str) -> None:
    attack = get(name)
    declared = [s.name for s in attack.SETTINGS if s.init]
    assert list(attack.settings()) == declared and declared == valid_settings(type(attack))
    for key, value in attack.settings().items():
        assert f"{key}={value!r}" in repr(attack)


def test_a_declaration_that_disagrees_with_init_fails_at_class_creation() -> None:
    with pytest.raises(TypeError, match="declares"):
        class Wrong(Attack):  # noqa: F841 - the class statement itself must fail
            SETTINGS = Settings(Int("steps", 10, "iterations"))

            def __init__(self, *, steps: int = 20) -> None:
                self.steps = steps

            def _run(self, model, x, y, threat, targets, ids, seed, task):
                return x


def test_a_subclass_that_forwards_its_keywords_keeps_the_declaration() -> None:
    from robustaudit.attacks.gradient import PGD

    class Recording(PGD):
        def __init__(self, **kw) -> None:
            super().__init__(**kw)

    assert Recording.SETTINGS is PGD.SETTINGS and Recording(steps=3).settings()["steps"] == 3
    with pytest.raises(UserError, match="pgd: steps must be an integer >= 1 and <= 100000, got 0"):
        Recording(steps=0)


def test_wrappers_show_the_wrapped_attack_first() -> None:
    eot = from_spec("eot:k=3(pgd:steps=2)")
    assert list(eot.settings()) == ["attack", "k", "judge"] and repr(eot).startswith("EOT(attack=PGD(steps=2, ")


def test_an_undeclared_user_attack_keeps_its_switches_checked() -> None:
    class Mine(Attack):
        name = "mine-settings-test"

        def __init__(self, *, flag: bool = False, steps: int = 3) -> None:
            self.flag, self.steps = flag, steps

        def _run(self, model, x, y, threat, targets, ids, seed, task):
            return x

    assert Mine.SETTINGS.inferred and valid_settings(Mine) == ["flag", "steps"]
    from robustaudit.attacks import registry

    register("mine-settings-test", Mine)
    try:
        with pytest.raises(UserError, match="flag is a switch: true or false, got 'maybe'"):
            from_spec("mine-settings-test:flag=maybe")
        assert from_spec("mine-settings-test:steps=2.5").steps == 2.5  # untyped: as before
        assert repr(Mine(flag=True)) == "Mine(flag=True, steps=3)"
    finally:
        registry._USER.pop("mine-settings-test")


def test_range_texts() -> None:
    assert Int("n", 1, "a count", 1, 10).range_text() == "1 .. 10"
    assert Float("p", 0.5, "a share", 0, 1, open_low=True).range_text() == "(0, 1]"
    assert Float("c", 0.5, "a share", 0, 1, open_high=True).range_text(words=True) == ">= 0 and < 1"
    assert Float("lr", 0.1, "a rate", 0, open_low=True).range_text() == "> 0"


def test_list_attacks_name_shows_types_defaults_and_ranges(capsys) -> None:
    assert main(["list", "attacks", "apgd"]) == 0
    out = capsys.readouterr().out
    for text in ("steps", "int", "100", "1 .. 100000", "alpha", "(0, 1]", "ce | dlr", "true | false"):
        assert text in out, text
    assert main(["list", "attacks", "transfer"]) == 0
    out = capsys.readouterr().out
    assert "di" in out and "[0, 1]" in out and "surrogate" in out
    assert main(["list", "attacks", "pgdd"]) == 2
    assert "did you mean 'pgd'" in capsys.readouterr().err
    assert main(["list", "models", "pgd"]) == 2
    assert "takes no NAME" in capsys.readouterr().err


def test_list_attacks_shows_no_norm_the_audit_refuses(capsys) -> None:
    # bpda, eot, transfer and foolbox were listed with l0, which --norm refuses
    assert main(["list", "attacks"]) == 0
    rows = {line.split("│")[1].strip(): line for line in capsys.readouterr().out.splitlines()
            if line.startswith("│") and line.split("│")[1].strip() and "classification" in line.split("│")[2]}
    assert not [name for name, line in rows.items() if "l0" in line.split("│")[4]]
    for wrapper in ("bpda", "eot", "transfer"):
        assert "the wrapped attack's" in rows[wrapper].split("│")[4]
    assert "linf, l2, l1" in rows["foolbox"].split("│")[4] and "linf, l2, l1" in rows["pgd"].split("│")[4]
    assert main(["list", "attacks", "eot"]) == 0
    assert "norms the wrapped attack's" in capsys.readouterr().out
