"""``python -m rlsd.verl [hydra overrides]``: veRL 0.9.1's ``main_ppo`` with the RLSD driver and worker.

The config is config/rlsd_trainer.yaml (veRL's ppo_trainer plus ``rlsd``); Ray starts as veRL
starts it (``ray_kwargs.ray_init``). veRL's task runner builds the workers, datasets and trainer;
here its actor worker class is RLSDActorRolloutRefWorker and its trainer RLSDRayPPOTrainer.
"""

import os

import hydra
import ray
from verl.trainer import main_ppo, main_ppo_v0

from rlsd.verl.trainer import LOSS_NAME, RLSDActorRolloutRefWorker, RLSDRayPPOTrainer
from rlsd_kernels.integrations.verl import register as register_rlsd_loss

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "config")


@ray.remote
class RLSDTaskRunner(main_ppo_v0.BaseTaskRunner):
    """veRL's v0 task runner (main_ppo_v0.TaskRunner.run) with the RLSD worker and trainer."""

    def add_actor_rollout_worker(self, config):
        _, group_cls = super().add_actor_rollout_worker(config)
        for role in self.role_worker_mapping:  # the actor(-rollout(-ref)) role just added
            self.role_worker_mapping[role] = ray.remote(RLSDActorRolloutRefWorker)
        return RLSDActorRolloutRefWorker, group_cls

    def run(self, config):
        register_rlsd_loss(LOSS_NAME)  # veRL checks the loss mode in this process too
        main_ppo_v0.RayPPOTrainer = RLSDRayPPOTrainer  # the name TaskRunner.run builds its trainer from
        main_ppo_v0.TaskRunner.__ray_metadata__.modified_class.run(self, config)


@hydra.main(config_path=CONFIG_DIR, config_name="rlsd_trainer", version_base=None)
def main(config):
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config
    from verl.utils.device import auto_set_device

    if config.trainer.use_v1:
        raise ValueError("trainer.use_v1 must be false: the RLSD driver extends veRL's RayPPOTrainer (v0)")
    auto_set_device(config)
    register_rlsd_loss(LOSS_NAME)
    validate_config(config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    main_ppo.run_ppo(config, task_runner_class=RLSDTaskRunner)


if __name__ == "__main__":
    main()
