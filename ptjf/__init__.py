"""ptjf: pre-training joint fine-tuning for multi-task learning under dataset imbalance.

The data flow of a run follows the package layout: `ptjf.tasks` (SeqIO registrations) →
`ptjf.sampling` (mixing rates) → `ptjf.data` (vocabularies, preprocessors, batches) →
`ptjf.models` → `ptjf.training` → `ptjf.checkpoints` → `ptjf.stages` → `ptjf.experiments`, with
`ptjf.runtime` (the machines) and `ptjf.commands` (the command line) around them. One line per
module: docs/architecture.md.
"""

import time as _time

__version__ = "0.1.0"

IMPORT_TIME = _time.time()
"""When ptjf was first imported: the launch time where /proc cannot say when the process began."""
