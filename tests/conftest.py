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
