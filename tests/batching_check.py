"""One check both runtimes' tests run: concurrent calls share a batch and reply as they do alone."""

from concurrent.futures import ThreadPoolExecutor

from langchain_core.messages import HumanMessage


def check_concurrent_calls_batch_like_alone(model, monkeypatch) -> None:
    """Prompts of different lengths from 4 threads: left-padded batches, the same greedy replies."""
    from fcagent.models.local.chat_model import LocalChatModel

    questions = ["hi", "count to three please", "what is two plus two, in words?", "name a colour"]
    alone = [model.invoke([HumanMessage(q)]).content for q in questions]
    batches: list[int] = []
    original = LocalChatModel._run_batch

    def spy(self, requests):
        batches.append(len(requests))
        return original(self, requests)

    monkeypatch.setattr(LocalChatModel, "_run_batch", spy)
    model._batcher._overlap = True  # as after overlapping calls: a batch leader waits for the others
    with ThreadPoolExecutor(max_workers=4) as pool:
        together = list(pool.map(lambda q: model.invoke([HumanMessage(q)]).content, questions))
    assert together == alone
    assert max(batches) > 1 and sum(batches) == 4  # calls shared a batch; none lost or run twice
