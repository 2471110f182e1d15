"""Ray glue: the local training loop on Ray workers, from one shared rebuild.

``launch.train_on_ray`` runs on the driver (rebuild once, share it, start a Ray Train
``TorchTrainer`` for N > 1 workers, one Tune trial for one worker); ``worker.run_worker`` runs in
each worker (the unchanged ``gsv_ray.train.loop.train``).
"""
