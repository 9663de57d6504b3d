import importlib.util
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

from deeplsp_helpers import data  # noqa: E402


@pytest.fixture(scope="session")
def splits():
    return data.load_fashion_mnist()


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def skip_or_fail(reason: str):
    """Skip a site check whose tools are missing, or fail it where ``$DEEPLSP_REQUIRE_SITE_CHECKS`` is set
    (.ci/run sets it: there the site's packages and a browser are installed, and must be used)."""
    if os.environ.get("DEEPLSP_REQUIRE_SITE_CHECKS", "").lower() not in ("", "0", "false"):
        pytest.fail(f"{reason} (and DEEPLSP_REQUIRE_SITE_CHECKS is set)")
    pytest.skip(reason)


def load_tool(name: str):
    """A build tool from tools/ (not an installed package) as a module."""
    path = Path(__file__).resolve().parents[1] / "tools" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def built_site(tmp_path_factory):
    """The course site built once per test session from the committed notebooks: ``site/index.html``."""
    missing = [m for m in ("sphinx", "myst_nb", "sphinx_book_theme") if importlib.util.find_spec(m) is None]
    if missing:
        skip_or_fail(f"the site's build packages are not installed ({', '.join(missing)}): "
                     "make setup installs them (the optional extra 'site')")
    course_site = load_tool("course_site")
    work = tmp_path_factory.mktemp("course_site")
    return course_site.build_site(Path(__file__).resolve().parents[1], work / "site", stage_dir=work / "src")
