#!/usr/bin/env bash
# Every configuration that the reference implementations (official MAE, BERT, open_clip, lightly) are compared on,
# through bench/throughput.py in one go, so that one GPU session gives all the figures from one machine:
#     OUT=/some/folder bash bench/run_all.sh [mae] [clip] [mlm] [ssl] [pipeline]      (no argument: all)
# Each line of $OUT/results.jsonl is one configuration (samples/s, MFU, peak memory); a failing configuration is
# reported and the others still run. Not a test.
set -u
cd "$(dirname "$0")/.."
export OUT="${OUT:-bench/out}"
mkdir -p "$OUT"
GROUPS_WANTED="${*:-mae clip mlm ssl pipeline}"

bench() {
  echo "== $*" >&2
  python bench/throughput.py "$@" || echo "FAILED: $*" >&2
}
wanted() { [[ " $GROUPS_WANTED " == *" $1 "* ]]; }

MAE_B16="objective=mae backbone=vit_base data=synthetic data.image_size=224 data.channels=3 data.batch_size=256
         objective.decoder_dim=512 objective.decoder_depth=8 objective.decoder_heads=16"
if wanted mae; then
  bench $MAE_B16
  bench $MAE_B16 compile=true
fi
if wanted clip; then
  bench objective=clip backbone=vit_base backbone.name=vit_base_patch32_224 backbone.patch_size=32 \
    backbone@objective.text_tower=text_clip objective.embed_dim=512 data.image_size=224 data.batch_size=1024 \
    data.tokenizer.vocab_size=49408   # open_clip's vocabulary
fi
if wanted mlm; then
  BERT_VOCAB=data.tokenizer.vocab_size=30522   # BERT-base's vocabulary (selfsup trains 8,192 tokens by default)
  bench objective=mlm backbone=text_base data.max_length=128 data.batch_size=256 $BERT_VOCAB
  bench objective=mlm backbone=text_base data.max_length=512 data.batch_size=64 $BERT_VOCAB
fi
if wanted ssl; then
  for objective in simclr byol; do
    # cpu: the GPU step alone (views made in advance); gpu: views made on the GPU, eager and compiled
    for variant in "data.augment_on=cpu" "data.augment_on=gpu" "data.augment_on=gpu compile=true"; do
      bench objective=$objective backbone=resnet50 data=synthetic data.image_size=224 data.channels=3 \
        data.batch_size=256 $variant
      bench objective=$objective backbone=resnet18 data=synthetic data.image_size=32 data.channels=3 \
        data.batch_size=512 $variant
    done
  done
fi
if wanted pipeline; then   # whole iterations fed by the real data loaders (decoding, transfer, augmentation)
  FMNIST="data=fashion_mnist ${FMNIST_ROOT:+data.root=$FMNIST_ROOT}"   # FMNIST_ROOT: the four .gz files
  PIPELINE=1 bench objective=simclr backbone=resnet18 $FMNIST data.batch_size=512
  PIPELINE=1 bench objective=mae $FMNIST data.batch_size=256
  # JPEGs of 200-500 px (written once): decoding and a crop per image in the workers, the rest on the batch
  [ -d "$OUT/jpegs/train" ] || python bench/jpeg_folder.py "$OUT/jpegs"
  PIPELINE=1 bench objective=simclr backbone=resnet50 data=image_folder data.root="$OUT/jpegs" data.batch_size=256
fi
echo "results: $OUT/results.jsonl" >&2
