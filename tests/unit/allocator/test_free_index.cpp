// FreeIndex (free_index.h): best fit in an ordered set (large blocks: by size, then address, with
// recycled nodes) and in exact-size bins found through a bitmap (small and medium blocks).
#include "allocator/free_index.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <set>
#include <utility>
#include <vector>

#include "alloc_counter.h"

namespace cudapool {
namespace {

struct FakeBlock {
  std::uintptr_t addr;
  std::size_t size;
  FakeBlock* free_prev = nullptr;
  FakeBlock* free_next = nullptr;
};

TEST(FreeIndex, EmptyIndexHasNoFit) {
  FreeIndex<FakeBlock> index;
  EXPECT_TRUE(index.empty());
  EXPECT_EQ(index.best_fit(1), nullptr);
}

TEST(FreeIndex, PicksTheSmallestBlockThatFits) {
  FreeIndex<FakeBlock> index;
  FakeBlock big{0x1000, 4096}, small{0x8000, 1024}, mid{0x20000, 2048};
  index.insert(&big);
  index.insert(&small);
  index.insert(&mid);
  EXPECT_EQ(index.size(), 3u);
  EXPECT_EQ(index.best_fit(512), &small);
  EXPECT_EQ(index.best_fit(1024), &small);
  EXPECT_EQ(index.best_fit(1536), &mid);
  EXPECT_EQ(index.best_fit(2048), &mid);
  EXPECT_EQ(index.best_fit(2560), &big);
  EXPECT_EQ(index.best_fit(4096), &big);
  EXPECT_EQ(index.best_fit(4608), nullptr);
}

TEST(FreeIndex, TiesGoToTheLowestAddress) {
  FreeIndex<FakeBlock> index;
  FakeBlock high{0x9000, 1024}, low{0x3000, 1024}, middle{0x5000, 1024};
  index.insert(&high);
  index.insert(&low);
  index.insert(&middle);
  EXPECT_EQ(index.best_fit(1024), &low);
  index.erase(&low);
  EXPECT_EQ(index.best_fit(1024), &middle);
  index.erase(&middle);
  EXPECT_EQ(index.best_fit(1024), &high);
}

TEST(FreeIndex, EraseRemovesExactlyThatBlock) {
  FreeIndex<FakeBlock> index;
  FakeBlock a{0x1000, 1024}, b{0x2000, 1024};
  index.insert(&a);
  index.insert(&b);
  index.erase(&b);
  EXPECT_EQ(index.size(), 1u);
  EXPECT_EQ(index.best_fit(1024), &a);
  index.erase(&a);
  EXPECT_TRUE(index.empty());
}

TEST(FreeIndex, ClearEmptiesTheIndex) {
  FreeIndex<FakeBlock> index;
  FakeBlock a{0x1000, 1024};
  index.insert(&a);
  index.clear();
  EXPECT_TRUE(index.empty());
  EXPECT_EQ(index.best_fit(512), nullptr);
}

// Binned or not, the fit has the smallest size at or above the request; the set also breaks
// ties by address (the bins take the block inserted last, checked below).
void random_operations_match_an_ordered_model(std::size_t binned_max, std::size_t max_units,
                                              bool check_address) {
  std::mt19937_64 rng(7);
  std::vector<FakeBlock> blocks(400);
  for (std::size_t i = 0; i < blocks.size(); ++i)
    blocks[i] = FakeBlock{0x100000 + i * 0x10000, (1 + rng() % max_units) * 512};
  FreeIndex<FakeBlock> index(binned_max);
  std::set<std::pair<std::size_t, std::uintptr_t>> model;
  std::vector<bool> in(blocks.size(), false);
  for (int step = 0; step < 20000; ++step) {
    std::size_t i = rng() % blocks.size();
    if (in[i]) {
      index.erase(&blocks[i]);
      model.erase({blocks[i].size, blocks[i].addr});
    } else {
      index.insert(&blocks[i]);
      model.insert({blocks[i].size, blocks[i].addr});
    }
    in[i] = !in[i];
    std::size_t want = 1 + rng() % ((max_units + 1) * 512);
    auto it = model.lower_bound({want, 0});
    FakeBlock* fit = index.best_fit(want);
    ASSERT_EQ(index.size(), model.size());
    if (it == model.end()) {
      ASSERT_EQ(fit, nullptr) << "step " << step;
    } else {
      ASSERT_NE(fit, nullptr) << "step " << step;
      ASSERT_EQ(fit->size, it->first) << "step " << step;
      if (check_address) {
        ASSERT_EQ(fit->addr, it->second) << "step " << step;
      }
      ASSERT_TRUE(model.count({fit->size, fit->addr})) << "step " << step;
    }
    if (step % 7 == 0 && it != model.end()) {  // take it, as the pool does, and put it back
      FakeBlock* taken = index.take_best_fit(want, it->first);
      ASSERT_NE(taken, nullptr);
      ASSERT_EQ(taken->size, it->first);
      ASSERT_EQ(index.take_best_fit(want, it->first - 1), nullptr) << "max_size ignored";
      index.insert(taken);
    }
  }
}

TEST(FreeIndex, RandomOperationsMatchAnOrderedModel) {
  random_operations_match_an_ordered_model(0, 32, true);
}

// Sizes spread over many bitmap words (up to 40960 bins, as in the medium class), so that the
// search crosses words and summary words.
TEST(FreeIndex, BinnedRandomOperationsMatchAnOrderedModel) {
  random_operations_match_an_ordered_model(20 << 20, 40960, false);
  random_operations_match_an_ordered_model(2 << 20, 4096, false);
}

TEST(FreeIndex, BinnedFindsTheNextNonEmptyBinAcrossWords) {
  FreeIndex<FakeBlock> index(20 << 20);
  FakeBlock low{0x1000, 512}, far{0x2000, 20 << 20}, mid{0x3000, 64 * 512 * 65};
  index.insert(&far);
  EXPECT_EQ(index.best_fit(513), &far);  // from bin 1 to the last bin: across summary words
  index.insert(&mid);
  index.insert(&low);
  EXPECT_EQ(index.best_fit(1), &low);
  EXPECT_EQ(index.best_fit(1024), &mid);
  EXPECT_EQ(index.best_fit(64 * 512 * 65), &mid);
  EXPECT_EQ(index.best_fit(64 * 512 * 65 + 1), &far);
  EXPECT_EQ(index.best_fit((20 << 20) + 1), nullptr);  // beyond the bins: the (empty) set
  index.erase(&far);
  EXPECT_EQ(index.best_fit(64 * 512 * 65 + 1), nullptr);
  EXPECT_EQ(index.size(), 2u);
}

TEST(FreeIndex, BinnedTiesGoToTheLastInserted) {
  FreeIndex<FakeBlock> index(2 << 20);
  FakeBlock a{0x1000, 1024}, b{0x9000, 1024}, c{0x5000, 1024};
  index.insert(&a);
  index.insert(&b);
  index.insert(&c);
  EXPECT_EQ(index.take_best_fit(1024, 1024), &c);
  index.erase(&a);  // from the end of the list
  EXPECT_EQ(index.take_best_fit(600, 1024), &b);
  EXPECT_TRUE(index.empty());
  EXPECT_EQ(index.best_fit(512), nullptr);
}

TEST(FreeIndex, SteadyStateInsertEraseAllocatesNothing) {
  FreeIndex<FakeBlock> index;  // the set: nodes are recycled (the bins never allocate)
  std::vector<FakeBlock> blocks(64);
  for (std::size_t i = 0; i < blocks.size(); ++i)
    blocks[i] = FakeBlock{0x1000 + i * 0x1000, 512};
  for (FakeBlock& b : blocks)
    index.insert(&b);  // warm up: the nodes exist now
  for (FakeBlock& b : blocks)
    index.erase(&b);
  test::HostAllocationCounter counter;
  for (int round = 0; round < 100; ++round) {
    for (FakeBlock& b : blocks)
      index.insert(&b);
    for (FakeBlock& b : blocks)
      index.erase(&b);
  }
  EXPECT_EQ(counter.count(), 0u);
}

}  // namespace
}  // namespace cudapool
