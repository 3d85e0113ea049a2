"""gitlab-hook: GitLab webhooks that wake a CI runner VM, report failed migrations, and steer runners from chat."""

__version__ = "0.1.0"
