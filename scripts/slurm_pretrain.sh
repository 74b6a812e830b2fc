#!/usr/bin/env bash
# SLURM example: 2 nodes x 8 GPUs. Submit with `sbatch scripts/slurm_pretrain.sh`.
#SBATCH --job-name=albef-pretrain
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=72:00:00
set -euo pipefail
head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
srun torchrun --nnodes "$SLURM_NNODES" --nproc_per_node 8 \
    --rdzv-backend c10d --rdzv-endpoint "$head_node:29500" --rdzv-id "$SLURM_JOB_ID" \
    -m albef_lab pretrain --config configs/pretrain_base.yaml --resume auto "$@"
