#!/usr/bin/env bash
# Train every model of docs/models.md in one GPU run of under 10 minutes, in parallel:
# the cell detector on all labs plus one detector per left-out lab (cross-lab check),
# and the ResNeXt classifier with and without BCCD cells (cross-lab check).
#
# Needs the packed data (python scripts/pack_training_set.py ../shared/data .pack) and, where
# ultralytics is not installed, its wheels in .whl/. Writes weights and logs to $OUT.
# MINUTES (default 5) is each run's training budget (CLS_MINUTES the classifiers'; a
# detector then chooses its threshold on its validation fields through the pipeline, 2-3
# minutes more); DEVICE (default cuda); RUN (det,cls) which models; LABS the detectors
# (all = every lab; a lab's name = without it; see below); PACK (default .pack) the packed
# data; CLS_ARGS more train-classifier arguments (smoke tests).
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
# each LABS entry is LAB or LAB:CLASSES (CLASSES all, the default: white cells, red cells
# and platelets; or wbc: white cells only, saved as det_<LAB>_wbc)
[[ $RUN == *det* ]] && for entry in ${LABS:-all PBC Raabin-WBC BCD BCCD}; do
    lab=${entry%%:*}; classes=all; [[ $entry == *:* ]] && classes=${entry#*:}
    name=det_$lab; [ "$classes" = wbc ] && name=${name}_wbc
    extra=(); [ "$lab" != all ] && extra=(--leave-out "$lab")
    (cli train-detector "${DET[@]}" --out "$W/$name.pt" --hours "$HOURS" --batch-size 32 --classes "$classes" \
        --workers "$([ "$lab" = all ] && echo 4 || echo 2)" --device "$DEVICE" "${extra[@]}") >"$W/$name.log" 2>&1 &
done
# packed crops: 112 px of the central 250 px, so field of view and cell size are given in
# packed pixels (the checkpoints are restated in full-crop pixels at the end)
CLS=($PACK/pbc --extra-data $PACK/pbc-extra --crop-size-px 112 --ref-cell-px 47.913
     --epochs 40 --minutes "${CLS_MINUTES:-$MINUTES}" --workers 4 --batch-size 64 --device "${CLS_DEVICE:-cuda}" ${CLS_ARGS:-})
# CLASSIFIERS (default both): pbc (PBC crops only) and/or pbc_bccd (plus BCCD's field cells)
if [[ $RUN == *cls* ]]; then
    [[ ${CLASSIFIERS:-pbc pbc_bccd} =~ (^| )pbc( |$) ]] &&
        (cli train-classifier "${CLS[@]}" --out "$W/cls_pbc.safetensors") >"$W/cls_pbc.log" 2>&1 &
    [[ ${CLASSIFIERS:-pbc pbc_bccd} == *pbc_bccd* ]] &&
        (cli train-classifier "${CLS[@]}" --field-cells "$PACK/bccd" --out "$W/cls_pbc_bccd.safetensors") \
            >"$W/cls_pbc_bccd.log" 2>&1 &
    # CLS_VARIANTS: more PBC-only classifiers for the cross-lab comparison, "NAME=ARGS"
    # separated by ";", e.g. "vs=--virtual-slides 1;os=--one-size 0.5" -> cls_pbc_vs, cls_pbc_os
    IFS=';' read -ra variants <<< "${CLS_VARIANTS:-}"
    for v in "${variants[@]}"; do
        [ -n "$v" ] || continue
        (cli train-classifier "${CLS[@]}" ${v#*=} --out "$W/cls_pbc_${v%%=*}.safetensors") \
            >"$W/cls_pbc_${v%%=*}.log" 2>&1 &
    done
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
# detectors two to a file: what comes back from a device run is at most 8 files of 16 MiB
cp "$W"/cls_*.safetensors "$OUT"/ 2>/dev/null
i=0; for f in "$W"/det_*.pt; do [ -f "$f" ] && basename "$f"; done | xargs -r -n 2 \
    | while read -r a b; do i=$((i + 1)); tar cf "$OUT/detectors_$i.tar" -C "$W" $a $b; done
ls -l "$OUT"
