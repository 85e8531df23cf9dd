#!/usr/bin/env bash
# The map of intervention: every behaviour task, each on the model its map entry names, tuned with an
# equal budget per arm family on validation and read at KL <= 0.05 on test. Writes map.md, map.json,
# map.png and one report per task here. A finished task's report is read back, so a stopped run resumes.
# Budget 2 per family, 3 seeds per chosen fine-tune point, two families at a time on one thread each
# (JOBS=2: one torch process gains little from a second core here, two processes use both).
set -euo pipefail
cd "$(dirname "$0")/../.."
export SURGEON_THREADS="${SURGEON_THREADS:-2}"
surgeon map --out examples/map --budget "${BUDGET:-2}" --seeds "${SEEDS:-3}" --jobs "${JOBS:-2}" --tasks \
  examples/many_facts/task.json,examples/number_compare/task.json,examples/word_swap/task.json,\
examples/misspelling/task.json,examples/archaic/task.json,examples/spelling/task.json,\
examples/prereform_orthography/task.json
