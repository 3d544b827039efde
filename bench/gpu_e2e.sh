#!/usr/bin/env bash
# On a GPU machine, after `. .gpu/setup.sh`: `w2s-pipe` end to end, resnet18 -> resnet50 at 224 px, from a store
# against --teacher (online), on the JPEG shards measure.sh makes (else makes 8,192). Prints each run's img/s
# (metrics.jsonl's windows after the first two) and wall time; logs go to $OUT. EXTRA adds train options to both
# arms (EXTRA="--decode cpu", EXTRA="--no-channels-last": the open non-finite loss, bench/README.md).
set -u
out=${OUT:-/tmp/e2e}; mkdir -p "$out"
data=${TMPDIR:-/tmp}/w2s-bench-jpeg
[ -f "$data/done" ] || python3 .gpu/make_jpeg_shards.py "$data" 8192 "$(nproc)" >/dev/null
pat="$data/bench-{000000..${LAST:-000063}}.tar"; w=$(( $(nproc) - 1 ))
python3 -c "import timm, torch; torch.manual_seed(0); torch.save(timm.create_model('resnet18', num_classes=1000).state_dict(), '/tmp/r18.pt')"
t0=$SECONDS
w2s-pipe label --weak resnet18 --weak-checkpoint /tmp/r18.pt --data "$pat" --num-classes 1000 --labels /tmp/e2e-store \
  --batch-size ${B:-256} --workers $w --quiet >"$out/e2e-label.log" 2>&1; echo "label rc=$? wall $((SECONDS - t0)) s"
rm -rf /tmp/e2e-run-store /tmp/e2e-run-online
common="${EXTRA:-} --strong ${STRONG:-resnet50} --img-size ${SIZE:-224} --batch-size ${B:-256} --workers $w --epochs 2 --no-eval --log-every 4 --quiet"
for arm in store online; do
  if [ $arm = store ]; then src="--labels /tmp/e2e-store"; else src="--teacher /tmp/r18.pt --teacher-model resnet18 --data $pat"; fi
  t0=$SECONDS
  w2s-pipe train $common $src --run-name /tmp/e2e-run-$arm >"$out/e2e-$arm.log" 2>&1; rc=$?
  echo "train $arm rc=$rc wall $((SECONDS - t0)) s; $(tail -n 1 "$out/e2e-$arm.log" | cut -c1-200)"
  python3 - /tmp/e2e-run-$arm/metrics.jsonl $arm <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"img_per_s"' in l]
rest = [r["img_per_s"] for r in rows[2:]] or [r["img_per_s"] for r in rows]
print(f"  {sys.argv[2]}: {len(rows)} records, img/s after the first two: mean {sum(rest)/len(rest):.0f}, best {max(rest):.0f}")
PY
done
