"""Services around training: the job manager, the lessons and the exports."""
