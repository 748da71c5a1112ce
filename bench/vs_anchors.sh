#!/usr/bin/env bash
# selfsup beside the reference ("anchor") implementations, on whatever device is present, in one table:
#     bash bench/vs_anchors.sh [mae] [mlm] [clip] [ssl] [aug]                (no argument: all)
# For each configuration it runs the anchor's script from $ANCHORS (official MAE, transformers BERT, open_clip,
# lightly; default ../shared/anchors, relative to the repository root) and bench/throughput.py at the same model,
# batch and precision, alternating them reference, selfsup, reference, selfsup ... for $ROUNDS rounds (default 3)
# so that a noisy machine affects both alike; `aug` runs bench/augment.py, which alternates its routes itself.
# At the end: one markdown table (samples/s median and min–max over rounds, the median of the per-round ratios,
# GFLOP/step and peak GiB of both sides). Every raw row is appended to $OUT/vs_anchors.jsonl (OUT: bench/out).
# Not a test. A configuration that fails gives a FAILED row and the others still run.
#
# Sizes. On a GPU (and SMOKE unset) the anchors' full configurations, as in $ANCHORS/run_all.sh and bench/run_all.sh:
#   mae   ViT-B/16 224 px batch 256, decoder 512x8x16, mask 0.75, eager and torch.compile
#   mlm   BERT-base (vocab 30522) seq 128 batch 256, seq 512 batch 64
#   clip  ViT-B/32 + 12 x 512 text tower (vocab 49408, context 77), batch 1024
#   ssl   SimCLR / BYOL, ResNet-50 224 px batch 256 and ResNet-18 (CIFAR stem) 32 px batch 512; the anchors in
#         channels_last (selfsup's benchmark puts the module in channels_last on CUDA), selfsup data.augment_on=cpu
#         (views made in advance: the step alone, as the anchors' pre-generated views)
#   aug   bench/augment.py --res 32 224, batch 256 (the anchors' GPU batch)
# Without a GPU (or with SMOKE=1) the anchors run their tiny CPU ("SMOKE") configurations, and selfsup the same:
#   mae   batch 4 (eager only); mlm seq 64 batch 2; clip batch 4; ssl ResNet-18 32 px batch 4 (NCHW), and with
#   CPU_R50=1 also ResNet-50 224 px batch 4 (off by default: ~200-270 GFLOP a step, tens of seconds each on 2
#   cores); aug --batch 64. WARMUP defaults to 1 and ITERS to 3 there (both scripts read them; SMOKE=1 on a GPU too).
# Matching the two sides:
#   - precision: bf16 autocast on the GPU on both sides. On the CPU selfsup's step is fp32, while the anchors'
#     common.autocast() would use CPU bf16: the anchors run through a small launcher that turns their autocast off
#     on the CPU (ANCHOR_CPU_BF16=1 keeps it), and counts their FLOPs with the math attention kernel, as selfsup's
#     benchmark does (FlopCounterMode counts the CPU's fused attention as zero). Timing is not changed by it.
#   - optimizer: AdamW on both (the anchors' choice); selfsup's SimCLR/BYOL default LARS is replaced by
#     optim=adamw (SSL_OPTIM= to keep selfsup's default). MLM/CLIP keep selfsup's AdamW recipes (adamw_bert, _clip).
#   - vocab: data.tokenizer.vocab_size=30522 for MLM (BERT's) and 49408 for CLIP (open_clip's); selfsup's default
#     trained-tokenizer size, 8192, would make a smaller model (92M instead of 110M parameters for BERT-base).
#   - SimCLR ResNet-18: objective.projector_hidden_dim=512 (lightly's head is SimCLRProjectionHead(512, 512, 128)).
#   - what cannot be matched, by design: selfsup's MLM head runs on the chosen 15% of tokens only (the reference's
#     on all positions: ~20% fewer FLOPs), and selfsup's MAE projects only the visible patches (~1.4% fewer).
# Packages. The anchors need transformers (mlm), open_clip_torch + ftfy (clip), lightly (ssl), kornia (aug) and
# $ANCHORS/vendor/mae (mae: facebookresearch/mae's models_mae.py + util/pos_embed.py, patched as $ANCHORS/README.md
# says; or MAE_REPO=a clone of facebookresearch/mae, which this script vendors and patches in a copy of $ANCHORS).
# A missing one gives a "skipped" row with the pip command; the rest goes on. $ANCHOR_SITE (default /tmp/site, as
# $ANCHORS/run_all.sh) is put on the anchors' PYTHONPATH when it exists, and wheels in .whl/ (the ones
# $ANCHORS/README.md lists) are installed there first (pip --no-index --no-deps --target): that is how the GPU
# machine gets them.
# Environment: ROUNDS (3), OUT (bench/out), ANCHORS, MAE_REPO, WARMUP, ITERS, CPU_R50, SSL_OPTIM, ANCHOR_CPU_BF16,
# RUN_TIMEOUT (seconds per script run, default 1800), SMOKE.
set -u
cd "$(dirname "$0")/.." || exit 1
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python}

PARTS="${*:-mae mlm clip ssl aug}"
for p in $PARTS; do
  case $p in mae|mlm|clip|ssl|aug) ;; *) echo "unknown part '$p' (mae mlm clip ssl aug)" >&2; exit 2 ;; esac
done
ROUNDS="${ROUNDS:-3}"
OUTDIR="${OUT:-bench/out}"
mkdir -p "$OUTDIR" || exit 1
JSONL="$OUTDIR/vs_anchors.jsonl"
RUN_TIMEOUT="${RUN_TIMEOUT:-1800}"
if [ -n "${ANCHORS:-}" ]; then
  ANCHOR_DIR=$ANCHORS
elif [ -d ../shared/anchors ]; then
  ANCHOR_DIR=../shared/anchors
else
  ANCHOR_DIR=shared/anchors   # a checkout that carries shared/ inside it (the GPU machine's copy)
fi
if ! ANCHOR_DIR=$(cd "$ANCHOR_DIR" 2>/dev/null && pwd); then
  echo "no anchors folder ${ANCHORS:-../shared/anchors} (set ANCHORS)" >&2
  exit 1
fi
RUN_ID="$(date +%Y%m%dT%H%M%S)-$$"
TMP=$(mktemp -d) || exit 1
trap 'rm -rf "$TMP"' EXIT

# The official MAE code is not in the anchors folder: MAE_REPO=DIR (a clone of facebookresearch/mae) puts its
# models_mae.py and util/pos_embed.py in vendor/mae of a copy of the anchors, with the two patches their README names.
if [ -n "${MAE_REPO:-}" ] && [ ! -f "$ANCHOR_DIR/vendor/mae/models_mae.py" ]; then
  if [ ! -f "$MAE_REPO/models_mae.py" ] || [ ! -f "$MAE_REPO/util/pos_embed.py" ]; then
    echo "MAE_REPO=$MAE_REPO has no models_mae.py and util/pos_embed.py (a clone of facebookresearch/mae)" >&2
    exit 1
  fi
  cp -r "$ANCHOR_DIR" "$TMP/anchors" && chmod -R u+w "$TMP/anchors" && mkdir -p "$TMP/anchors/vendor/mae/util" || exit 1
  sed 's/, qk_scale=None//' "$MAE_REPO/models_mae.py" >"$TMP/anchors/vendor/mae/models_mae.py"
  sed 's/np\.float)/np.float64)/' "$MAE_REPO/util/pos_embed.py" >"$TMP/anchors/vendor/mae/util/pos_embed.py"
  ANCHOR_DIR="$TMP/anchors"
fi
TABLE="$PY bench/vs_anchors_table.py"

# --- the anchors' packages: wheels in .whl/ go to $SITE; $SITE goes on the anchors' PYTHONPATH
SITE="${ANCHOR_SITE:-/tmp/site}"
if compgen -G ".whl/*.whl" >/dev/null; then
  echo "installing .whl/*.whl into $SITE" >&2
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
    || echo "warning: installing .whl/ into $SITE failed" >&2
fi
REF_PYTHONPATH="${PYTHONPATH:-}"
[ -d "$SITE" ] && REF_PYTHONPATH="$SITE${REF_PYTHONPATH:+:$REF_PYTHONPATH}"
has() { env PYTHONPATH="$REF_PYTHONPATH" $PY -c "import $1" >/dev/null 2>&1; }

read -r DEVICE TORCH <<<"$($PY -c "import torch
print(torch.cuda.get_device_name(0).replace(' ', '_') if torch.cuda.is_available() else 'cpu', torch.__version__)" \
  2>/dev/null)"
DEVICE=${DEVICE:-unknown}
if [ "$DEVICE" != cpu ] && [ "$DEVICE" != unknown ] && [ "${SMOKE:-}" != 1 ]; then MODE=full; else MODE=small; fi
if [ "$MODE" = small ]; then   # both scripts read these; in full mode their own CUDA defaults (10 / 30) stay
  export WARMUP="${WARMUP:-1}" ITERS="${ITERS:-3}"
fi

# The anchors run through this launcher: on the CPU, their bf16 autocast off (selfsup's CPU step is fp32) and their
# FLOPs counted through the math attention kernel (as bench/throughput.py counts), then the script as __main__.
read -r -d '' LAUNCHER <<'PY'
import os, runpy, sys
here, script = sys.argv[1], sys.argv[2]
sys.path.insert(0, here)
import common, torch
if common.DEV == "cpu":
    if os.environ.get("ANCHOR_CPU_BF16") != "1":
        common.autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=False)
        print("vs_anchors: CPU, the anchor's bf16 autocast turned off (fp32, as selfsup's CPU step)", flush=True)
    from torch.nn.attention import SDPBackend, sdpa_kernel
    _count = common.count_flops
    def count_flops(step):
        with sdpa_kernel(SDPBackend.MATH):
            return _count(step)
    common.count_flops = count_flops
sys.argv = [script] + sys.argv[3:]
runpy.run_path(script, run_name="__main__")
PY

show() {  # the lines of a log worth seeing live
  grep -E "^(RESULT|analytic check|vs_anchors:)" "$1" | cut -c1-400 >&2
}

# bench_side SIDE CONFIG ROUND BATCH NOTE SHOWN COMMAND...: one run of COMMAND, shown as SHOWN, recorded
bench_side() {
  local side=$1 cfg=$2 round=$3 batch=$4 note=$5 shown=$6
  shift 6
  local log="$TMP/$side.log" rc
  echo "== [$round/$ROUNDS] $cfg | $side: $shown" >&2
  "$@" >"$log" 2>&1
  rc=$?
  show "$log"
  $TABLE record --jsonl "$JSONL" --run "$RUN_ID" --config "$cfg" --side "$side" --round "$round" \
    --batch "$batch" --rc "$rc" --log "$log" --cmd "$shown" --note "$note" \
    || echo "   (could not record the $side row)" >&2
}

# anchor_script SCRIPT ARGS...: an anchor script through the launcher, in $TMP, with the anchors' packages
anchor_script() {
  (cd "$TMP" && env -u OUT PYTHONPATH="$REF_PYTHONPATH" timeout "$RUN_TIMEOUT" \
    $PY -c "$LAUNCHER" "$ANCHOR_DIR" "$ANCHOR_DIR/$1" "${@:2}")
}

bench_reference() {  # CONFIG ROUND BATCH NOTE SCRIPT ARGS...
  bench_side reference "$1" "$2" "$3" "$4" "$5 ${*:6}" anchor_script "${@:5}"
}

bench_selfsup() {  # CONFIG ROUND BATCH NOTE OVERRIDES...
  bench_side selfsup "$1" "$2" "$3" "$4" "bench/throughput.py ${*:5}" \
    env -u OUT timeout "$RUN_TIMEOUT" $PY bench/throughput.py "${@:5}"
}

# compare CONFIG BATCH NOTE SKIP SCRIPT ARGS... -- OVERRIDES...: both sides, alternated, $ROUNDS rounds
compare() {
  local cfg=$1 batch=$2 note=$3 skip=$4 script=$5
  shift 5
  local ref=() r
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do ref+=("$1"); shift; done
  [ $# -gt 0 ] && shift
  if [ -n "$skip" ]; then
    echo "== $cfg" >&2
    $TABLE skip --jsonl "$JSONL" --run "$RUN_ID" --config "$cfg" --reason "$skip"
    return
  fi
  for r in $(seq 1 "$ROUNDS"); do
    bench_reference "$cfg" "$r" "$batch" "$note" "$script" ${ref[@]+"${ref[@]}"}
    bench_selfsup "$cfg" "$r" "$batch" "$note" "$@"
  done
}

missing() {  # missing MODULE "PIP ARGS": empty when importable, else the skip reason
  has "$1" || echo "skipped: no $1 for the reference (pip install $2)"
}
wanted() { [[ " $PARTS " == *" $1 "* ]]; }

if [ "$MODE" = full ]; then
  MAE_BS=256; MLM_CFGS="128x256 512x64"; CLIP_BS=1024; SSL_CFGS="resnet50:224:256 resnet18:32:512"
  SSL_FMT=channels_last; AUG_ARGS=()
else
  MAE_BS=4; MLM_CFGS="64x2"; CLIP_BS=4; SSL_CFGS="resnet18:32:4"; SSL_FMT=nchw; AUG_ARGS=(--batch 64)
  [ "${CPU_R50:-}" = 1 ] && SSL_CFGS="resnet50:224:4 $SSL_CFGS"
fi
SSL_OPTIM="${SSL_OPTIM-optim=adamw}"
echo "vs_anchors: $DEVICE (torch $TORCH), $MODE configurations, parts: $PARTS, $ROUNDS rounds, anchors $ANCHOR_DIR," \
  "WARMUP=${WARMUP:-default} ITERS=${ITERS:-default}, run $RUN_ID" >&2

if wanted mae; then
  skip=""
  [ -f "$ANCHOR_DIR/vendor/mae/models_mae.py" ] || skip="skipped: no vendor/mae in $ANCHOR_DIR (facebookresearch/mae\
 models_mae.py + util/pos_embed.py, patched as its README says); selfsup's side not run either"
  [ -z "$skip" ] && skip=$(missing timm "timm==1.0.29")
  MAE="objective=mae backbone=vit_base data=synthetic data.image_size=224 data.channels=3 data.batch_size=$MAE_BS
       objective.decoder_dim=512 objective.decoder_depth=8 objective.decoder_heads=16"
  note="selfsup projects only the visible patches"
  # shellcheck disable=SC2086
  compare "MAE ViT-B/16 224 px, batch $MAE_BS, mask 0.75" "$MAE_BS" "$note" "$skip" bench_mae.py --bs "$MAE_BS" \
    -- $MAE
  if [ "$MODE" = full ]; then
    # shellcheck disable=SC2086
    compare "MAE ViT-B/16 224 px, batch $MAE_BS, torch.compile" "$MAE_BS" "$note; compiled FLOPs: an eager step's" \
      "$skip" bench_mae.py --bs "$MAE_BS" --compile --no-eager -- $MAE compile=true
  fi
fi

if wanted mlm; then
  skip=$(missing transformers "transformers==5.17.0")
  for c in $MLM_CFGS; do
    seq=${c%x*} bs=${c#*x}
    compare "BERT-base MLM, seq $seq, batch $bs" "$bs" \
      "selfsup's MLM head runs on the 15% chosen tokens only (reference: all positions)" "$skip" \
      bench_bert.py --cfg "$c" -- \
      objective=mlm backbone=text_base data.max_length="$seq" data.batch_size="$bs" data.tokenizer.vocab_size=30522
  done
fi

if wanted clip; then
  skip=$(missing open_clip "open_clip_torch==3.3.0 ftfy==6.3.1")
  compare "CLIP ViT-B/32 + 12 x 512 text, batch $CLIP_BS" "$CLIP_BS" \
    "captions: reference 77 random tokens, selfsup 8-77 padded to 77" "$skip" bench_clip.py --bs "$CLIP_BS" -- \
    objective=clip backbone=vit_base backbone.name=vit_base_patch32_224 backbone.patch_size=32 \
    backbone@objective.text_tower=text_clip objective.embed_dim=512 data.image_size=224 data.batch_size="$CLIP_BS" \
    data.tokenizer.vocab_size=49408
fi

if wanted ssl; then
  skip=$(missing lightly "lightly==1.6.0")
  for method in simclr byol; do
    for c in $SSL_CFGS; do
      IFS=: read -r arch res bs <<<"$c"
      extra=()
      [ "$method" = simclr ] && [ "$arch" = resnet18 ] && extra=(objective.projector_hidden_dim=512)
      [ -n "$SSL_OPTIM" ] && extra+=("$SSL_OPTIM")
      name=$([ "$method" = simclr ] && echo SimCLR || echo BYOL)
      compare "$name $arch $res px, batch $bs" "$bs" "views made in advance (the step alone), $SSL_FMT" "$skip" \
        bench_ssl_resnet.py --methods "$method" --cfgs "$c" --memory-formats "$SSL_FMT" -- \
        objective="$method" backbone="$arch" data=synthetic data.image_size="$res" data.channels=3 \
        data.batch_size="$bs" data.augment_on=cpu ${extra[@]+"${extra[@]}"}
    done
  done
fi

if wanted aug; then
  echo "== aug: bench/augment.py" >&2
  args=(--res 32 224 --rounds "$ROUNDS" --anchors "$ANCHOR_DIR" ${AUG_ARGS[@]+"${AUG_ARGS[@]}"})
  note=""
  if ! has kornia; then   # the kornia route would fail: time the others, say why kornia is missing
    note="no kornia for the reference route (pip install kornia==0.9.0 kornia_rs==0.2.0)"
    args+=(--only selfsup_eager selfsup_compiled selfsup_workers v2_per_image)
  fi
  log="$TMP/aug.log"
  env -u OUT PYTHONPATH="$REF_PYTHONPATH" timeout "$RUN_TIMEOUT" $PY bench/augment.py "${args[@]}" >"$log" 2>&1
  rc=$?
  $TABLE aug --jsonl "$JSONL" --run "$RUN_ID" --log "$log" --rc "$rc" --cmd "bench/augment.py ${args[*]}" \
    --note "$note" || echo "   (could not record the aug rows)" >&2
fi

precision="bf16 autocast on both sides"
[ "$DEVICE" = cpu ] && precision="fp32 on both sides (the anchors' CPU bf16 autocast turned off)"
[ "$DEVICE" = cpu ] && [ "${ANCHOR_CPU_BF16:-}" = 1 ] && precision="reference CPU bf16 autocast, selfsup fp32"
echo
$TABLE table --jsonl "$JSONL" --run "$RUN_ID" \
  --header "### selfsup vs the anchors: ${DEVICE//_/ }, torch $TORCH, $(date +%F), $MODE configurations" \
  --header "" \
  --header "$ROUNDS rounds, reference and selfsup alternated; each figure the median of ITERS=${ITERS:-30} timed steps\
 after WARMUP=${WARMUP:-10}; samples/s: median (min–max) over rounds; ratio: median (min–max) of the per-round\
 ratios; $precision; FLOPs counted by FlopCounterMode (forward and backward, attention through the math kernel off\
 CUDA); peak GiB on CUDA only. Raw rows: $JSONL (run $RUN_ID)."
