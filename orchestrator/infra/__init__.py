"""Infrastructure the stages share: the Ray session and trial resources, Tune and MLflow
storage (and the shared-storage guard), and the crop cache on disk.
"""
