"""Ray glue: the local training loop spread over N workers with Ray Train, from one shared rebuild.

``launch.train_on_ray`` runs on the driver (rebuild once, share it, start a ``TorchTrainer``);
``worker.train_loop_per_worker`` runs in each worker (the unchanged ``gsv_ray.train.loop.train``).
"""
