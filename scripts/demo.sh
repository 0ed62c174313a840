#!/usr/bin/env bash
# Runs the inductor_embed demo (set-up included):
#   bash scripts/demo.sh [--batch N] [--iters N] [--device cpu|cuda] [--quick]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
exec "${PYTHON:-python}" -m inductor_embed.demo "$@"
