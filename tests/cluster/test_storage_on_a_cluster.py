"""On a cluster joined through --address the shared-storage checks apply from the start (an
autoscaling cluster has only its head then), and a SQLite MLflow store on NFS/EFS is refused."""
import pytest
from conftest import own_ray

from core.errors import DataError
from core.workspace import Workspace
from orchestrator.infra.storage import check_tracking_store, cluster_hosts, stage_locations, unshared

MOUNTS = """/dev/nvme0n1p1 / ext4 rw,relatime 0 0
fs-0abc.efs.us-west-2.amazonaws.com:/ /mnt/shared nfs4 rw,vers=4.1 0 0
"""


def test_sqlite_on_nfs_is_refused_with_the_fix_on_several_hosts():
    with pytest.raises(DataError) as err:
        check_tracking_store("sqlite:////mnt/shared/ws/mlflow.db", hosts=2, mounts=MOUNTS)
    assert "nfs4" in str(err.value) and "--tracking-uri http://" in str(err.value)
    assert "MLFLOW_TRACKING_URI" in str(err.value)
    check_tracking_store("sqlite:////mnt/shared/ws/mlflow.db", hosts=1, mounts=MOUNTS)   # one machine
    check_tracking_store("sqlite:////home/ubuntu/mlflow.db", hosts=2, mounts=MOUNTS)     # head's disk: warned
    check_tracking_store("http://10.0.0.5:5000", hosts=2, mounts=MOUNTS)


def test_a_cluster_joined_by_address_counts_as_several_hosts_before_its_workers_start(tmp_path):
    """One live node (the head of an autoscaling cluster at driver start): with --address the
    local workspace is warned about; without, it is not."""
    with own_ray(num_cpus=1):   # one live node
        assert cluster_hosts() == 1 and cluster_hosts("auto") == 2
    locs = stage_locations(Workspace("/home/ubuntu/ws"))
    assert unshared(locs, 1, MOUNTS) == [] and len(unshared(locs, 2, MOUNTS)) == 2
