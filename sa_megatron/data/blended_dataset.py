"""Several GPT datasets mixed by weight, sample by sample (see `build_blending_index`)."""

import numpy as np


class BlendedDataset:
    def __init__(self, datasets: list, dataset_index: np.ndarray, dataset_sample_index: np.ndarray):
        self.datasets = datasets
        self.dataset_index = dataset_index
        self.dataset_sample_index = dataset_sample_index

    def __len__(self) -> int:
        return len(self.dataset_index)

    def __getitem__(self, index: int) -> np.ndarray:
        if not -len(self) <= index < len(self):
            raise IndexError(f"sample {index} is out of range for a blend of {len(self)} samples")
        return self.datasets[self.dataset_index[index]][int(self.dataset_sample_index[index])]
