#!/usr/bin/env bash
# The README examples on generated demo data, run with the detkit source tree TREE, outputs and a log into OUT.
# Compare two trees (e.g. before/after a refactor): run it for each, then diff the two OUT folders
# (file hashes) and the logs; timings, checkpoints' timing fields and absolute paths are expected to differ.
# Usage: bash tools/readme_examples.sh TREE OUT   (SHARED=../shared, PYTHON=.venv/bin/python by default)
set -u
PY=${PYTHON:-$(dirname "$0")/../.venv/bin/python}; PY=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY"); D="$PY -m detkit"
TREE=$(cd "$1" && pwd); OUT=$(mkdir -p "$2" && cd "$2" && pwd); rm -rf "${OUT:?}"/*; cd "$OUT"
export PYTHONPATH=$TREE OMP_NUM_THREADS=1
S=${SHARED:-$TREE/../shared}
log() { echo "### $*" >> "$OUT/log.txt"; }
run() { log "$@"; "$@" >> "$OUT/log.txt" 2>&1; echo "rc=$?" >> "$OUT/log.txt"; }
$PY -c "
from detkit.data.synth import generate_voc_dataset
generate_voc_dataset('voc', 24, seed=0, img_size=(128,128))
" >> log.txt 2>&1 
VOC=$(find voc -name Annotations -type d | head -1 | xargs dirname)
run $D convert-voc "$VOC" yolo
run $D cfg --cfg $TREE/cfg/yolov3-tiny.cfg --classes 2 -o my.cfg
run $D cfg --cfg yolov3-tiny --check
run $D anchors --data yolo/obj.data --num 6 --img-size 128 --cfg yolov3-tiny --write-cfg anchors.cfg
run $D stats --data yolo/obj.data --split all --json stats/stats.json
run $D detect --cfg $TREE/cfg/yolov3-tiny.cfg --weights $S/weights/yolov3-tiny.weights --names $S/weights/coco.names --source $S/images/dog.jpg --out det --resize
run $D detect --cfg $TREE/cfg/yolov3-tiny.cfg --weights $S/weights/yolov3-tiny.weights --names $S/weights/coco.names --source $S/images --out det2 --no-images --save-txt --no-fast
run $D export --cfg yolov3-tiny --weights $S/weights/yolov3-tiny.weights --format darknet -o rt.weights
run $D train --cfg yolov3-tiny --classes 2 --data yolo/obj.data --epochs 1 --batch 4 --img-size 96 --device cpu --workers 0 --out runs/t --seed 0
run $D eval --metric voc --cfg my.cfg --weights runs/t/last.pt --data yolo/obj.data --json eval/m.json --img-size 96
run $D eval --metric voc07 --gt yolo/obj.data --pred det2/labels --names $S/weights/coco.names
run $D --help
