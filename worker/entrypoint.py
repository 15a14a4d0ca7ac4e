"""Entry script of the Fargate worker image: starts the node configured from the environment.

The image (generated per environment by ``starburst.envsync``) runs this, or equivalently
``python -m starburst.node.entrypoint``; see that module for the variables it reads.
"""

from starburst.node.entrypoint import main

if __name__ == "__main__":
    main()
