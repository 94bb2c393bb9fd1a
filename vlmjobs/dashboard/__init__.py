"""The web dashboard (`vlmjobs dashboard`): jobs, curves, overlays, workers, schedules."""
