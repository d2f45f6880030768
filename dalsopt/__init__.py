"""dalsopt: the 18 learning-rate strategies of "Learning Rate Engineering" (arXiv 2604.27295), DALS and
its variants, as composable torch optimizers behind one registry.

    import dalsopt
    s = dalsopt.make("dals", model, total_steps=T)
    loss.backward(); s.step(loss=loss); s.zero_grad()

In a loop that calls ``optimizer.step()`` itself, hand the loss over first:
``dalsopt.observe_loss(s.optimizer, loss)`` (``dalsopt.integrations`` does it for ``transformers.Trainer``).
"""
from .chain import Chain
from .groups import block_names, blocks
from .loss import global_mean, observe_loss
from .phase import MissingLossWarning
from .spaces import Around, Dim
from .strategies import GENERATIONS, REGISTRY, Strategy, entry, make, names, resolve, search_space

__all__ = ["make", "names", "resolve", "entry", "search_space", "Dim", "Around", "Strategy", "REGISTRY", "GENERATIONS",
           "Chain", "blocks", "block_names", "observe_loss", "global_mean", "MissingLossWarning"]
__version__ = "0.1.0"
