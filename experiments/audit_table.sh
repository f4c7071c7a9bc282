#!/bin/sh
# The attack table of issue 15 (README). About 10 minutes on 2 CPU cores. Results: experiments/results/audit-*/audit.json
set -e
OUT=experiments/results
python -m secure_fl.cli audit audit-faces --attack inversion --iterations 300 --batch 2 --out $OUT/audit-faces
python -m secure_fl.cli audit audit-faces-dp --attack inversion --iterations 300 --batch 2 --out $OUT/audit-faces-dp
python -m secure_fl.cli audit audit-faces --attack membership --out $OUT/audit-faces
python -m secure_fl.cli audit audit-heart --attack membership --out $OUT/audit-heart
python -m secure_fl.cli audit audit-heart --attack epsilon --protocol "dp-sgd-local[target_epsilon=1.0]" \
  --protocol "dp-sgd-local[target_epsilon=4.0]" --protocol "dp-sgd-local[target_epsilon=8.0]" \
  --protocol plain-fedavg --out $OUT/audit-heart
python experiments/audit_table.py
