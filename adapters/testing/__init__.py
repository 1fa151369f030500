"""galley's testing kit: one contract suite per port, and pytest fixtures (``galley_...``).

Check your adapter against its port: subclass the suite in a test file of your own and say how
to build the adapter::

    from galley.adapters.testing import BlobStoreContract

    class TestMyStore(BlobStoreContract):
        def make_store(self, tmp_path):
            return MyStore(root=tmp_path)

A failing check names the guarantee it probes. The fixtures come from the pytest plugin that
``pip install 'galley[testing]'`` registers (``galley.adapters.testing.plugin``); see
docs/testing.md.
"""

from galley.adapters.testing.blob_store import BlobStoreContract
from galley.adapters.testing.completer import CompleterContract
from galley.adapters.testing.contract import Contract
from galley.adapters.testing.dataset_store import DatasetStoreContract
from galley.adapters.testing.hub_client import HubClientContract
from galley.adapters.testing.metrics_store import MetricsStoreContract
from galley.adapters.testing.run_tracker import RunTrackerContract
from galley.adapters.testing.training_client import TrainingClientContract

__all__ = [
    "BlobStoreContract",
    "CompleterContract",
    "Contract",
    "DatasetStoreContract",
    "HubClientContract",
    "MetricsStoreContract",
    "RunTrackerContract",
    "TrainingClientContract",
]
