"""The package installs next to a user's own stack: ranges, not pins; torch alone to import; the wheel's
C++ path. pip runs here without any index, find-links or config (``--no-index``, no PIP_* variables,
PIP_CONFIG_FILE=/dev/null): a plan that needed another torch fails instead of fetching one."""

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "setup.py", "README.md", "rlsd_kernels", "python", "csrc")
# Imported by the trainer, the benchmarks or an optional backend, never by `import rlsd_kernels`.
NOT_FOR_THE_LIBRARY = ("numpy", "triton", "transformers", "vllm", "verl", "trl", "liger_kernel", "yaml",
                       "cut_cross_entropy", "ninja", "pybind11", "rlsd")


PIP = (sys.executable, "-m", "pip")
HERMETIC = {**{k: v for k, v in os.environ.items() if not k.startswith("PIP_")}, "PIP_CONFIG_FILE": os.devnull}


def run(*cmd, **kw):
    kw.setdefault("env", HERMETIC)
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=240, **kw)
    assert done.returncode == 0, f"{cmd}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The built wheel, from a copy of the sources (the build leaves nothing in the checkout)."""
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(ROOT / name, src / name)
    out = tmp_path_factory.mktemp("wheel")
    run(*PIP, "wheel", "-q", "--no-deps", "--no-build-isolation", src, "-w", out)
    (whl,) = out.glob("rlsd_kernels-*.whl")
    return whl


def venv(path: Path, shared_site_packages: Path | None = None) -> Path:
    """A venv without pip (this interpreter's pip drives it via ``--python``); ``shared_site_packages``
    is put on its path by a .pth file (so it "has" that torch without a 200 MB copy)."""
    run(sys.executable, "-m", "venv", "--without-pip", path)
    site = Path(run(path / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
                .stdout.strip())
    if shared_site_packages is not None:
        (site / "shared.pth").write_text(f"{shared_site_packages}\n")
    return path


def fake_dist(site: Path, name: str, version: str) -> None:
    """An installed distribution as pip's resolver sees it: a dist-info with METADATA and RECORD."""
    info = site / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "INSTALLER").write_text("pip\n")
    (info / "RECORD").write_text("")


def pip_plan(env: Path, target: str) -> list:
    """What ``pip install TARGET`` would install into ``env``: [(name, version)] from ``--dry-run --report``."""
    report = env / "plan.json"
    run(*PIP, "--python", env / "bin" / "python", "install", "--dry-run", "--no-index",
        "--quiet", "--report", report, target)
    return [(i["metadata"]["name"].lower(), i["metadata"]["version"]) for i in json.loads(report.read_text())["install"]]


def wheel_requirements(whl: Path) -> list:
    import zipfile
    with zipfile.ZipFile(whl) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    return [Requirement(line.split(":", 1)[1].strip()) for line in meta.splitlines() if line.startswith("Requires-Dist:")]


def test_wheel_states_ranges_not_pins(wheel):
    reqs = {r.name: r for r in wheel_requirements(wheel)}
    for name in ("torch", "triton", "transformers", "vllm"):
        assert not any(s.operator == "==" for s in reqs[name].specifier), f"{name} is pinned: {reqs[name]}"
    core = sorted(r.name for r in wheel_requirements(wheel) if r.marker is None)
    assert core == ["ninja", "torch"]
    for version in ("2.9.1", "2.11.0+cu130", "2.13.0", "2.14.1"):  # the GPU image's and this machine's
        assert reqs["torch"].specifier.contains(version), version
    for version in ("3.5.1", "3.6.0", "3.7.1"):
        assert reqs["triton"].specifier.contains(version), version


@pytest.mark.slow
@pytest.mark.parametrize("torch_version", ["2.11.0+cu130", "2.9.1"])
def test_install_keeps_the_installed_torch(tmp_path, wheel, torch_version):
    """pip's plan for the wheel (and its triton extra) in a venv holding another torch: no torch in it."""
    env = venv(tmp_path / "env")
    site = Path(run(env / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
                .stdout.strip())
    fake_dist(site, "torch", torch_version)
    fake_dist(site, "triton", "3.6.0")
    fake_dist(site, "ninja", "1.13.0")
    assert pip_plan(env, f"{wheel}[triton]") == [("rlsd-kernels", "0.1.0")]


@pytest.mark.slow
def test_install_below_the_floor_asks_for_another_torch(tmp_path, wheel):
    """The check above can fail: a torch below the range makes pip look for another (none here)."""
    env = venv(tmp_path / "env")
    site = Path(run(env / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
                .stdout.strip())
    fake_dist(site, "torch", "2.8.0")
    fake_dist(site, "ninja", "1.13.0")
    done = subprocess.run([*PIP, "--python", env / "bin" / "python", "install", "--dry-run", "--no-index", "--quiet",
                           wheel], capture_output=True, text=True, timeout=240, env=HERMETIC)
    assert done.returncode != 0 and "requirement torch>=" in done.stderr, done.stderr


def refusing(modules) -> str:
    """Python source under which ``modules`` are absent as if not installed: ``import`` raises
    ModuleNotFoundError and ``importlib.util.find_spec`` answers None (a None in sys.modules)."""
    return textwrap.dedent(f"""
        import sys
        sys.modules.update(dict.fromkeys({tuple(modules)!r}))
    """)


def test_import_needs_torch_alone(tmp_path):
    """``import rlsd_kernels`` and a fused loss with every optional package refused."""
    code = refusing(NOT_FOR_THE_LIBRARY) + textwrap.dedent("""
        import torch, rlsd_kernels
        h = torch.randn(2, 3, 8, requires_grad=True); W = torch.randn(16, 8, requires_grad=True)
        y = torch.randint(0, 16, (2, 3)); mask = torch.ones(2, 3)
        loss, _ = rlsd_kernels.rlsd_loss(h, W, y, torch.tensor([1.0, -1.0]), mask, teacher_logprobs=-torch.rand(2, 3),
                                         impl="chunked")
        loss.backward()
        assert h.grad is not None and W.grad is not None
        print(sorted(m for m, mod in sys.modules.items() if mod is not None and m.split(".")[0] in {refused!r}))
    """).replace("{refused!r}", repr(NOT_FOR_THE_LIBRARY))
    done = run(sys.executable, "-c", code, cwd=tmp_path, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.slow
def test_cpp_impl_from_the_installed_wheel(tmp_path, wheel):
    """Non-editable install into a venv with this torch (and ninja on PATH): the C++ epilogues load from
    the wheel's share/ copy of csrc, built into a fresh directory, and agree with the PyTorch epilogues."""
    env = venv(tmp_path / "env", shared_site_packages=Path(sysconfig.get_paths()["purelib"]))
    run(*PIP, "--python", env / "bin" / "python", "install", "-q", "--no-index", "--no-deps",
        wheel)
    code = textwrap.dedent("""
        import torch, rlsd_kernels
        from rlsd_kernels.ops import cpp
        assert "site-packages" in rlsd_kernels.__file__, rlsd_kernels.__file__
        h = torch.randn(2, 5, 16); W = torch.randn(40, 16); y = torch.randint(0, 40, (2, 5))
        lp_cpp, _ = rlsd_kernels.fused_linear_logprobs(h, W, y, impl="cpp")
        lp_ref, _ = rlsd_kernels.fused_linear_logprobs(h, W, y, impl="chunked")
        torch.testing.assert_close(lp_cpp, lp_ref)
        print(cpp._source())
    """)
    environ = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    build = tmp_path / "build"
    done = run(env / "bin" / "python", "-c", code, cwd=tmp_path,
               env={**environ, "RLSD_KERNELS_BUILD_DIR": str(build),
                    "PATH": f"{Path(sys.executable).parent}:{environ.get('PATH', '/usr/bin:/bin')}"})
    assert done.stdout.strip().startswith(str(env)), done.stdout  # the installed copy of the source
    assert list(build.glob("*.so"))


def test_build_warns_of_nothing_of_its_own(tmp_path):
    """A verbose editable build shows no setuptools warning about the project's own configuration
    (e.g. a data folder left out of ``packages``); setuptools' notice that every editable install
    gets ("Editable installation.") is not about the project. The warm starts are package data."""
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(ROOT / name, src / name)
    done = run(*PIP, "install", "-v", "--no-deps", "--no-build-isolation", "--ignore-installed", "--prefix",
               tmp_path / "prefix",
               "-e", src)
    importlib.metadata.distribution("rlsd-kernels")  # this environment's own install is left alone
    warnings = [line for line in (done.stdout + done.stderr).splitlines()
                if "Warning:" in line and "Editable installation." not in line]
    assert not warnings, "\n".join(warnings)
    run(*PIP, "wheel", "-q", "--no-deps", "--no-build-isolation", src, "-w", tmp_path / "wheel")
    import zipfile
    with zipfile.ZipFile(next((tmp_path / "wheel").glob("*.whl"))) as z:
        names = set(z.namelist())
    assert "rlsd/demo/warmstarts/manifest.json" in names
    assert {f"rlsd/demo/warmstarts/{w}/model.safetensors" for w in ("good", "middle", "strong")} <= names
