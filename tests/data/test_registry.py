"""Building data modules by name or from a Hydra config, and using them in a Trainer."""

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from torch.utils.data import DistributedSampler

from distill.data import DATASETS, TOYS, MoonsDataModule, build_datamodule
from distill.flows import Chain, Flow, build_maf, build_preprocessing

SMALL = {"num_train": 256, "num_val": 64, "num_test": 64, "batch_size": 64}


def test_dataset_names():
    assert set(DATASETS) == {"moons", "siggraph", "digits", "file", "notes", "waveform", *TOYS}
    assert set(TOYS) == {"8gaussians", "checkerboard", "pinwheel", "2spirals", "rings", "circles"}


def test_unknown_name_lists_the_allowed_ones():
    with pytest.raises(
        ValueError, match=r"unknown data set 'mnist': choose one of moons, siggraph"
    ):
        build_datamodule("mnist")


def test_unknown_option_lists_the_allowed_ones():
    with pytest.raises(
        ValueError, match=r"'rings' has no option\(s\) \['noise'\]: its options are num_train"
    ):
        build_datamodule("rings", noise=0.1)


def test_attributes_before_setup_and_the_spec_that_rebuilds_it():
    module = build_datamodule("checkerboard", seed=5, **SMALL)
    assert (module.name, module.features, module.batch_size, module.num_workers) == (
        "checkerboard",
        2,
        64,
        0,
    )
    assert module.train_data is None and module.preprocessing is None
    assert module.preprocessing_config == {"features": 2}
    # the data's options stay out of Lightning's hparams (loggers would show them as top-level
    # keys); the spec that rebuilds the module is plain values
    assert dict(module.hparams) == {}
    assert module.spec == {
        "_target_": "distill.data.build_datamodule",
        "name": "checkerboard",
        "seed": 5,
        **SMALL,
    }


def test_hydra_instantiates_from_target():
    module = instantiate({"_target_": "distill.data.MoonsDataModule", "noise": 0.1, **SMALL})
    assert isinstance(module, MoonsDataModule) and module.noise == 0.1
    module = instantiate({"_target_": "distill.data.build_datamodule", "name": "rings", **SMALL})
    assert module.name == "rings"


def test_train_data_shards_under_a_distributed_sampler():
    module = build_datamodule("moons", **SMALL)
    module.setup()
    dataset = module.train_dataloader().dataset
    shards = [
        list(DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=False))
        for rank in (0, 1)
    ]
    assert sorted(shards[0] + shards[1]) == list(range(256))


class Teacher(L.LightningModule):
    """The minimal consumer: a MAF in model space, the preprocessing composed after it."""

    def __init__(self, preprocessing_config: dict):
        super().__init__()
        self.save_hyperparameters()
        maf = build_maf(preprocessing_config["features"], 2, (16,))
        self.preprocessing = build_preprocessing(**preprocessing_config)
        self.flow = Flow(Chain([maf.bijector, self.preprocessing]))

    def training_step(self, batch, batch_index):
        return -self.flow.log_prob(batch).mean()

    def validation_step(self, batch, batch_index):
        self.log("val_nll", -self.flow.log_prob(batch).mean())

    def configure_optimizers(self):
        return torch.optim.Adam(self.flow.parameters(), lr=1e-3)


def test_fit_with_a_lightning_trainer_and_reload_from_the_checkpoint(tmp_path):
    module = build_datamodule("siggraph", **SMALL)
    module.setup()
    teacher = Teacher(module.preprocessing_config)
    teacher.preprocessing.load_state_dict(module.preprocessing.state_dict())
    trainer = L.Trainer(
        max_steps=2,
        limit_val_batches=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        accelerator="cpu",
    )
    trainer.fit(teacher, datamodule=module)
    path = tmp_path / "teacher.ckpt"
    trainer.save_checkpoint(path)
    reloaded = Teacher.load_from_checkpoint(path)
    torch.testing.assert_close(
        reloaded.preprocessing.bijectors[0].std, module.preprocessing.bijectors[0].std
    )
    x = module.test_data[:8]
    torch.testing.assert_close(reloaded.flow.log_prob(x), teacher.flow.log_prob(x))
