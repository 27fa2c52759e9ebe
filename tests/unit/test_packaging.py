"""Packaging: the core runs without the notebook stack, every dependency has an upper bound,
and constraints.txt pins every distribution ferry and its extras need."""

import importlib.util
import os
import subprocess
import sys
import textwrap
import tomllib
from importlib.metadata import version

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from .test_runbook import ROOT

# the notebook stack, as import names: none of it may load on a core path
NOTEBOOK_STACK = (
    "papermill",
    "great_expectations",
    "jupyterlab",
    "jupyter_server",
    "nbconvert",
    "nbformat",
    "nbclient",
    "altair",
    "vl_convert",
    "ipykernel",
    "ipywidgets",
    "IPython",
    "pandas",
    "numpy",
    "jsonschema",
    "bs4",
)
NOTEBOOK_DISTRIBUTIONS = {
    "papermill",
    "great-expectations",
    "jupyterlab",
    "nbconvert",
    "nbformat",
    "altair",
    "vl-convert-python",
    "ipykernel",
    "ipywidgets",
    "pandas",
    "jsonschema",
    "beautifulsoup4",
}
CORE_MODULES = (
    "ferry",
    "ferry.core.mirror",
    "ferry.core.validate",
    "ferry.live.dualwriter",
    "ferry.live.handover",
    "ferry.live.cutover",
    "ferry.live.phases",
    "ferry.services.traffic",
    "ferry.live.group_consumer",
    "ferry.redis.acl",
    "ferry.runbook.audit",
    "ferry.runbook.audit_anchor",
    "ferry.services.servers",
    "ferry.cli",
)
CORE_VERBS = (
    "backfill",
    "validate",
    "phase",
    "cutover",
    "translate-group",
    "traffic",
    "group-consumer",
    "acl",
    "audit",
    "services",
)


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def without_notebook_stack(body: str) -> subprocess.CompletedProcess:
    """Run ``body`` in a fresh interpreter where importing the notebook stack fails as if it
    were not installed (this checkout's lib/ first on the path)."""
    script = textwrap.dedent(
        f"""
        import importlib.abc, sys

        BLOCKED = {NOTEBOOK_STACK!r}

        class NotInstalled(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)

        sys.meta_path.insert(0, NotInstalled())
        """
    ) + textwrap.dedent(body)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "lib"), str(ROOT)])}
    return subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )


def test_the_core_imports_and_its_verbs_run_without_the_notebook_stack():
    done = without_notebook_stack(
        f"""
        import contextlib, io
        for module in {CORE_MODULES!r}:
            __import__(module)
        import ferry.cli
        assert ferry.DualWriter and ferry.live.handover.StreamConsumer
        for verb in {CORE_VERBS!r}:
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                try:
                    ferry.cli.main([verb, "--help"])
                except SystemExit as exc:
                    assert exc.code == 0, (verb, exc.code)
            assert "usage: ferry " + verb in out.getvalue(), verb
        # a core verb doing its work: the mirror's least-privilege ACL line
        assert ferry.cli.main(["acl", "mirror", "runbook/streams/payments.yaml"]) == 0
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        assert not loaded, loaded
        print("core ok")
        """
    )
    assert done.returncode == 0, done.stderr
    assert "core ok" in done.stdout
    assert "ACL SETUSER" in done.stdout.upper()


def test_a_verb_needing_an_extra_says_which_in_one_line():
    for argv, extra in (
        (["run", "payments"], "runbook"),
        (["demo"], "runbook"),
        (["lab", "--no-browser"], "lab"),
    ):
        done = without_notebook_stack(
            f"import ferry.cli\nsys.exit(ferry.cli.main({argv!r}))\n",
        )
        assert done.returncode not in (0, 1), (argv, done.stderr)  # an error, not a gate
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, (argv, done.stderr)
        assert f"pip install 'ferry[{extra}]'" in lines[0]
        assert lines[0].startswith(f"ferry: error: 'ferry {argv[0]}' needs the {extra} extra")


def test_a_missing_extra_module_met_inside_a_verb_is_one_line_too():
    from ferry.extras import explain

    exc = ModuleNotFoundError("No module named 'papermill'", name="papermill")
    assert explain(exc, "run") == (
        "'ferry run' needs the runbook extra: pip install 'ferry[runbook]' "
        "(not installed: papermill)"
    )
    assert explain(ModuleNotFoundError("x", name="no_such_module"), "run") is None


def test_the_core_dependencies_hold_none_of_the_notebook_stack():
    core = {canonicalize_name(Requirement(r).name) for r in pyproject()["dependencies"]}
    assert not core & {canonicalize_name(n) for n in NOTEBOOK_DISTRIBUTIONS}
    runbook = {
        canonicalize_name(Requirement(r).name)
        for r in pyproject()["optional-dependencies"]["runbook"]
    }
    assert {"papermill", "great-expectations", "pandas", "jsonschema", "beautifulsoup4"} <= runbook


def test_the_extras_provide_every_module_the_one_line_error_names():
    from ferry.extras import EXTRA_MODULES

    for modules in EXTRA_MODULES.values():
        for module in modules:
            assert importlib.util.find_spec(module) is not None, module


def all_requirements() -> list[tuple[str, Requirement]]:
    project = pyproject()
    out = [("core", Requirement(r)) for r in project["dependencies"]]
    for extra, lines in project["optional-dependencies"].items():
        out += [(extra, Requirement(r)) for r in lines]
    return [(where, r) for where, r in out if canonicalize_name(r.name) != "ferry"]


def test_every_dependency_has_an_upper_bound():
    unbounded = [
        f"{where}: {req}"
        for where, req in all_requirements()
        if not any(s.operator in ("<", "<=", "==", "~=", "===") for s in req.specifier)
    ]
    assert not unbounded, "no upper bound (a new major would come in unasked): " + ", ".join(
        unbounded
    )


def constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        req = Requirement(line)
        (spec,) = req.specifier  # exactly one: name==version
        assert spec.operator == "==", line
        pins[canonicalize_name(req.name)] = spec.version
    return pins


def test_constraints_pin_every_distribution_the_extras_need_at_the_version_installed():
    spec = importlib.util.spec_from_file_location("lock", ROOT / "scripts" / "lock.py")
    lock = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lock)

    pins = constraints()
    assert "ferry" not in pins
    needed = lock.closure(lock.project_requirements(("dev",)))
    assert not set(needed) - set(pins), f"not pinned (run make lock): {set(needed) - set(pins)}"
    for name in (
        "papermill",
        "great-expectations",
        "jupyterlab",
        "pandas",
        "redis",
        "cryptography",
    ):
        assert name in needed
    stale = {n: (pins[n], v) for n, v in needed.items() if pins[n] != v}
    assert not stale, f"constraints.txt differs from what is installed (pin, installed): {stale}"


def test_the_pins_satisfy_pyproject():
    pins = constraints()
    for where, req in all_requirements():
        pinned = pins[canonicalize_name(req.name)]
        assert req.specifier.contains(pinned, prereleases=True), f"{where}: {req} vs {pinned}"
    assert version("packaging") == pins["packaging"]
