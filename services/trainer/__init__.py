"""The trainer: SFT of the policy (SL-CAI); later the reward model and PPO. Each trainer is a
``*_config.py`` + ``*_trainer.py`` pair."""
