import pytest

from mmccd.config import ExperimentConfig, dump_yaml, from_dict, load_config, merge, preset_names
from mmccd.errors import ConfigError


def test_every_preset_loads():
    names = preset_names()
    assert {"tiny", "cpu", "reference"} <= set(names)
    for name in names:
        cfg = load_config(name)
        assert cfg.prepare.size > 0


def test_reference_preset_is_the_published_protocol():
    cfg = load_config("reference")
    assert cfg.prepare.size == 128
    assert (cfg.network.base_channels, cfg.network.channel_mult) == (32, (1, 1, 2, 3, 4))
    assert cfg.network.attention_resolutions == (32, 16, 8)
    assert (cfg.train.iterations, cfg.train.batch_size, cfg.train.lr) == (100_000, 32, 1e-4)
    assert (cfg.score.num_masks, cfg.score.ddim_steps, cfg.score.mask_stride) == (128, 100, 2)
    assert (cfg.diffusion.num_timesteps, cfg.diffusion.beta_start, cfg.diffusion.beta_end) == (1000, 1e-4, 0.02)


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="unknown key 'learning_rate'"):
        merge(ExperimentConfig(), {"train": {"learning_rate": 1}})


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match="train.iterations: expected an integer"):
        merge(ExperimentConfig(), {"train": {"iterations": "many"}})
    with pytest.raises(ConfigError, match="expected true or false"):
        merge(ExperimentConfig(), {"train": {"augment_flip": "yes"}})


def test_lists_become_tuples_and_round_trip():
    cfg = merge(ExperimentConfig(), {"network": {"channel_mult": [1, 2]}})
    assert cfg.network.channel_mult == (1, 2)
    import yaml

    assert from_dict(yaml.safe_load(dump_yaml(cfg))) == cfg


def test_bad_contrast_and_same_contrast(tmp_path):
    with pytest.raises(ConfigError, match="unknown contrast 'pd'"):
        load_config("tiny", {"source": "pd"})
    with pytest.raises(ConfigError, match="both 'flair'"):
        load_config("tiny", {"source": "flair", "target": "flair"})


def test_unknown_preset_lists_available():
    with pytest.raises(ConfigError, match="Available: .*tiny"):
        load_config("nonexistent")


def test_yaml_file_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(lst)


def test_per_method_preset_sections(tmp_path):
    """gpu: each baseline at its paper's size; the section applies only to its method; overrides still win."""
    import torch

    from mmccd.scoring import build_method, method_names

    assert load_config("gpu", {"method": "dae"}).network.base_channels == 64
    assert load_config("gpu", {"method": "ddpm"}).baseline.noise_type == "simplex"
    assert load_config("gpu", {"method": "mmccd"}).network == load_config("reference").network
    assert load_config("gpu", {"method": "dae", "network": {"base_channels": 8}}).network.base_channels == 8
    for name in method_names():  # every method builds at its gpu size (on the meta device: no memory)
        with torch.device("meta"):
            build_method(load_config("gpu", {"method": name}))
    bad = tmp_path / "bad.yaml"
    bad.write_text("per_method:\n  nosuch: {network: {base_channels: 8}}\n")
    with pytest.raises(ConfigError, match="unknown method 'nosuch'"):
        load_config(bad)
    bad.write_text("per_method:\n  dae: {network: {widht: 8}}\n")
    with pytest.raises(ConfigError, match="per_method.dae.network: unknown key 'widht'"):
        load_config(bad, {"method": "dae"})
