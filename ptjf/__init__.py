"""ptjf: pre-training joint fine-tuning for multi-task learning under dataset imbalance.

The data flow of a run follows the package layout: `ptjf.tasks` (SeqIO registrations) →
`ptjf.sampling` (mixing rates) → `ptjf.data` (vocabularies, preprocessors, batches) →
`ptjf.models` → `ptjf.training` → `ptjf.checkpoints` → `ptjf.stages` → `ptjf.experiments`.
"""

__version__ = "0.1.0"
