"""The care.data pipeline's domain logic (no Dagster here but the plumbing modules)."""

import warnings

# Great Expectations imports pyspark when it is installed (the Spark engine's extra), and
# pyspark warns on import that it "does not yet fully support pandas >= 3.0.0". This
# pipeline hands Spark Arrow tables, never pandas frames, so the warning says nothing about
# it; left alone it would be printed in the middle of every run's output.
warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas", category=FutureWarning)
