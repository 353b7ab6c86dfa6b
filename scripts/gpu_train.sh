#!/usr/bin/env bash
# Train every model of docs/models.md in one GPU run of under 10 minutes, in parallel:
# the white-cell detector on all labs plus one detector per left-out lab (cross-lab check),
# and the ResNeXt classifier with and without BCCD cells (cross-lab check).
#
# Needs the packed data (python scripts/pack_training_set.py ../shared/data .pack) and, where
# ultralytics is not installed, its wheels in .whl/. Writes weights and logs to $OUT.
# MINUTES (default 5) is each run's training budget (a detector then chooses its threshold on
# its validation fields through the pipeline, 2-3 minutes more); DEVICE (default cuda); RUN (det,cls) which
# models; LABS the detectors (all = every lab; a lab's name = without it); PACK
# (default .pack) the packed data; CLS_ARGS more train-classifier arguments (smoke tests).
set -u
OUT=${OUT:-/tmp/bm_cells_gpu}
MINUTES=${MINUTES:-5}
DEVICE=${DEVICE:-cuda}
RUN=${RUN:-det,cls}
PACK=${PACK:-.pack}
W=/tmp/bm_cells_runs
mkdir -p "$OUT" "$W"
# the packed data travels as one archive (tar czf .packed/data.tgz .pack)
[ -d "$PACK" ] || tar xzf .packed/data.tgz || exit 1
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 YOLO_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
# bm-cells with ultralytics' results.csv reader made optional (it needs polars, which the
# GPU image may lack; only the training summary uses it)
cli() {  # exec: a background job is the python process itself, so the deadline can stop it
    exec python3 - "$@" <<'EOF'
import sys
try:
    import polars  # noqa: F401
except ImportError:
    from ultralytics.engine.trainer import BaseTrainer
    BaseTrainer.read_results_csv = lambda self: {}
from napari_bm_cells.cli import main
main(sys.argv[1:])
EOF
}
HOURS=$(python3 -c "print($MINUTES / 60)")
DET=($PACK/txl-pbc/data.yaml $PACK/bccd)
[[ $RUN == *det* ]] && for lab in ${LABS:-all PBC Raabin-WBC BCD BCCD}; do
    extra=(); [ "$lab" != all ] && extra=(--leave-out "$lab")
    (cli train-detector "${DET[@]}" --out "$W/det_$lab.pt" --hours "$HOURS" --batch-size 32 \
        --workers "$([ "$lab" = all ] && echo 4 || echo 2)" --device "$DEVICE" "${extra[@]}") >"$W/det_$lab.log" 2>&1 &
done
# packed crops: 112 px of the central 250 px, so field of view and cell size are given in
# packed pixels (the checkpoints are restated in full-crop pixels at the end)
CLS=($PACK/pbc --extra-data $PACK/pbc-extra --crop-size-px 112 --ref-cell-px 47.913
     --epochs 40 --minutes "$MINUTES" --workers 4 --batch-size 64 --device "${CLS_DEVICE:-cuda}" ${CLS_ARGS:-})
if [[ $RUN == *cls* ]]; then
    (cli train-classifier "${CLS[@]}" --out "$W/cls_pbc.safetensors") >"$W/cls_pbc.log" 2>&1 &
    (cli train-classifier "${CLS[@]}" --field-cells "$PACK/bccd" --out "$W/cls_pbc_bccd.safetensors") \
        >"$W/cls_pbc_bccd.log" 2>&1 &
fi
# DEADLINE (s, default 540): stop what still runs and keep what it saved (best epoch so far)
while [ -n "$(jobs -r)" ] && [ "$SECONDS" -lt "${DEADLINE:-540}" ]; do sleep 15
    nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
    tail -qn1 "$W"/*.log | cut -c1-150; done
[ -n "$(jobs -r)" ] && echo "deadline: stopping $(jobs -r | wc -l) runs" && kill $(jobs -pr) 2>/dev/null
wait
# classifiers: field of view and cell size in full-crop pixels, weights in half precision
# (a run stopped at the deadline leaves its best epoch in float32)
ls "$W"/cls_*.safetensors >/dev/null 2>&1 && python3 scripts/pack_training_set.py --restate "$W"/cls_*.safetensors
tail -n 5 "$W"/*.log
tar czf "$OUT/logs.tgz" -C "$W" $(cd "$W" && ls *.log *.json *.csv 2>/dev/null)
cp "$W"/det_*.pt "$W"/cls_*.safetensors "$OUT"/ 2>/dev/null
ls -l "$OUT"
