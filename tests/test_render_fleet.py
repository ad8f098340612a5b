"""The fleet view's rendering: device column, queue line, dead-letter listing (unit tests)."""
from lstmq.producer import render
from lstmq.worker.runtime import gpu_index


def test_the_gpu_index_is_the_machines_not_the_one_inside_the_worker(monkeypatch):
    monkeypatch.setenv("LSTMQ_GPU_INDEX", "3")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert gpu_index(["/physical_device:GPU:0"]) == 3        # inside the worker it is GPU 0
    monkeypatch.delenv("LSTMQ_GPU_INDEX")
    assert gpu_index(["/physical_device:GPU:0"]) == 3        # started without lstmq-worker
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert gpu_index(["/physical_device:GPU:0"]) == 0
    assert gpu_index([]) is None                              # a CPU worker


def test_the_device_column_names_the_gpu_by_index_and_name():
    assert render.device_text({"device": "gpu3", "gpu_index": 3, "gpu_name": "NVIDIA H100 80GB HBM3"}) == \
        "GPU 3 NVIDIA H100 80GB HBM3"
    assert render.device_text({"device": "cpu", "gpu_index": None, "gpu_name": None}) == "cpu"


def queue(name, messages=0, dead=0):
    return {"queue": name, "messages": messages, "consumers": 1, "dead_letters": dead,
            "dead_letter_key": f"lstmq:dead-letter:{name}", "newest_dead_letters": ["b'junk'"] * dead}


def test_dead_letters_show_beside_the_queue_depths_only_when_there_are_some():
    assert render.queues_line([queue("train"), queue("generate", 4)]) == "queued messages: train 0, generate 4"
    assert render.queues_line([queue("train"), queue("generate", 0, 2)]) == \
        "queued messages: train 0, generate 0; dead-lettered: generate 2 (lstmq queues shows them)"
    table = render.queues_table([queue("train"), queue("generate", 0, 2)])
    assert "newest dead-lettered entries of generate (Redis list lstmq:dead-letter:generate):" in table
    assert table.count("b'junk'") == 2


def test_the_training_bar_shows_the_running_loss_and_keeps_each_finished_epoch(capsys):
    import dataclasses

    from lstmq.shared.config import load_settings
    from lstmq.shared.store import JobKind, JobRecord, JobStatus

    record = JobRecord(id="j", kind=JobKind.TRAIN, status=JobStatus.RUNNING, params=load_settings().model_params(),
                       created=0.0, updated=0.0, model_name="m", epochs=2)
    bar = render.TrainProgress(record, show=True, log=None)
    record = dataclasses.replace(record, epoch_running=1, step=10, steps=40, batch_loss=6.5)
    bar.update(record)
    assert bar.bar.postfix == "batch 10/40, loss 6.5000"
    record = dataclasses.replace(record, epoch=1, loss=6.25, val_perplexity=600.0, epoch_running=2, step=5,
                                 batch_loss=6.125)
    bar.update(record)   # the finished epoch gets its line; the bar shows the new epoch's loss and the last ppl
    assert bar.bar.postfix == "batch 5/40, loss 6.1250, val ppl 600.00"
    record = dataclasses.replace(record, status=JobStatus.SUCCEEDED, epoch=2, loss=6.0, val_perplexity=550.0,
                                 epoch_running=None, step=None)
    bar.update(record)   # at the end: the last epoch's figures, not a stale batch counter
    assert bar.bar.postfix == "loss 6.0000, val ppl 550.00"
    bar.close()
    err = capsys.readouterr().err
    assert "epoch 1/2: loss 6.2500, val ppl 600.00\n" in err and "epoch 2/2: loss 6.0000, val ppl 550.00\n" in err
