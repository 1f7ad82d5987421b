"""fedsim: federated training of generative models on Flower + Ray.

Core modules follow the data flow: config -> data -> partition -> model ->
diffusion -> train -> client_app / server_app -> evaluation -> run folder.
"""

__version__ = "0.1.0"
