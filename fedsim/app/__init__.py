"""The Flower apps: ServerApp (server_app.py), ClientApp (client_app.py) and its
compression mod, the node's data (node_data.py) and the simulation's windowed grid.
The only fedsim package that imports strategies/; nothing below imports it."""
