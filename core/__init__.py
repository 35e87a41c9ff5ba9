"""The backup engine of blnk-backup-bot: free of Slack, driven by the CLI, the HTTP API,
the scheduler and the Slack bot alike."""

__version__ = "0.2.0"
